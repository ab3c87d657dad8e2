"""Runners for plan jobs: a local process pool (default) or a Ray cluster.

A runner maps `run_job` over a list of `PoolJob`s and returns the outcomes
in the same order. Jobs are pure and seeded, so every runner gives the same
plan. Ray is imported only when its runner is built (`pip install
'dualpool[ray]'`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from dualpool.errors import ConfigError
from dualpool.planner._plan import PoolJob, PoolOutcome, run_job, run_serial

__all__ = ["local_runner", "make_runner", "ray_runner"]

Runner = Callable[[Sequence[PoolJob]], list[PoolOutcome]]


def _cost(job: PoolJob) -> int:
    """Simulated jobs first (the long ones), so the pool drains evenly."""
    return 0 if job.simulate else 1


def local_runner(
    processes: int | None = None, progress: Callable[[int, int], None] | None = None
) -> Runner:
    """Jobs across `processes` local processes (default: all cores; 1: in-process)."""
    n = processes or os.cpu_count() or 1
    if n < 1:
        raise ConfigError("--processes", f"must be >= 1, got {n}")

    def run(jobs: Sequence[PoolJob]) -> list[PoolOutcome]:
        order = sorted(range(len(jobs)), key=lambda i: _cost(jobs[i]))
        out: list[PoolOutcome | None] = [None] * len(jobs)
        if n == 1 or len(jobs) <= 1:
            for done, i in enumerate(order, 1):
                out[i] = run_job(jobs[i])
                if progress:
                    progress(done, len(jobs))
        else:
            with ProcessPoolExecutor(max_workers=min(n, len(jobs))) as ex:
                futs = {ex.submit(run_job, jobs[i]): i for i in order}
                from concurrent.futures import as_completed

                for done, f in enumerate(as_completed(futs), 1):
                    out[futs[f]] = f.result()
                    if progress:
                        progress(done, len(jobs))
        return [o for o in out if o is not None]

    return run


def ray_runner(
    address: str | None = None, progress: Callable[[int, int], None] | None = None
) -> Runner:
    """Jobs as Ray tasks (`address`: a cluster, e.g. "auto"; None: the current/local one)."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--backend", "ray is not installed; pip install 'dualpool[ray]'"
        ) from None

    def run(jobs: Sequence[PoolJob]) -> list[PoolOutcome]:
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        task: Any = ray.remote(run_job)
        refs = [task.remote(j) for j in jobs]
        pending = list(refs)
        done_n = 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done_n += len(ready)
            if progress:
                progress(done_n, len(jobs))
        return list(ray.get(refs))

    return run


def make_runner(
    backend: str = "local",
    *,
    processes: int | None = None,
    address: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Runner:
    if backend == "local":
        return local_runner(processes, progress)
    if backend == "ray":
        return ray_runner(address, progress)
    if backend == "serial":
        return run_serial
    raise ConfigError("--backend", f"must be local, ray or serial, got {backend!r}")
