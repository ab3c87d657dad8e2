"""Runners for plan jobs: a local process pool (default) or a Ray cluster.

A runner maps `execute` over a list of jobs (`PoolJob`: a pool's analytic
sizing; `WindowJob`: a pool's search on one window) and returns the outcomes
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
from dualpool.planner._plan import PoolJob, execute, run_serial
from dualpool.planner._windows import WindowJob

__all__ = ["local_runner", "make_runner", "ray_runner"]

Runner = Callable[[Sequence[Any]], list[Any]]


def _cost(job: PoolJob | WindowJob) -> float:
    """The long jobs first, so the pool drains evenly: window searches by
    their requests (a pool's share of the run), then calibrations."""
    if isinstance(job, WindowJob):
        b = job.budget
        share = float(((b > job.lo) & (b <= job.hi)).mean()) if b.size else 0.0
        return -share * job.plan.run_requests * (1 if job.evaluate_at is not None else 6)
    return 0.0 if job.calibrate else 1.0


def local_runner(
    processes: int | None = None, progress: Callable[[int, int], None] | None = None
) -> Runner:
    """Jobs across `processes` local processes (default: all cores; 1: in-process)."""
    n = processes or os.cpu_count() or 1
    if n < 1:
        raise ConfigError("--processes", f"must be >= 1, got {n}")

    def run(jobs: Sequence[Any]) -> list[Any]:
        order = sorted(range(len(jobs)), key=lambda i: _cost(jobs[i]))
        out: list[Any] = [None] * len(jobs)
        if n == 1 or len(jobs) <= 1:
            for done, i in enumerate(order, 1):
                out[i] = execute(jobs[i])
                if progress:
                    progress(done, len(jobs))
        else:
            with ProcessPoolExecutor(max_workers=min(n, len(jobs))) as ex:
                futs = {ex.submit(execute, jobs[i]): i for i in order}
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

    def run(jobs: Sequence[Any]) -> list[Any]:
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        task: Any = ray.remote(execute)
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
