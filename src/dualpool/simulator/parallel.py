"""Sweeps across processes: a simulation per time shard, summaries merged.

A simulation is a pure function of (fleet, workload slice, options), and its
`Summary` merges, so a long workload splits into `count` equal time slices
(`workload.shard(i, count)`), each simulated independently (here in a process
pool; on a cluster by any task runner), and the summaries add up.

The approximation: each shard starts with empty instances and a calibrator
at its priors, so the first seconds of every shard see less queueing (and a
less-trained estimator) than the same moments of one long run, and requests
still running at a shard's end finish without the next shard's load. With
shards of minutes or more and `warmup_s` set (the first seconds of each
shard are simulated but left out of the statistics), the difference is
small; the test suite checks counts exactly and percentiles loosely against
a single run.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from dualpool.errors import ConfigError
from dualpool.simulator.fleet import FleetConfig
from dualpool.simulator.records import RecordSink, open_sink
from dualpool.simulator.simulation import SimOptions, simulate
from dualpool.simulator.summary import Summary
from dualpool.workload import Workload, shard

__all__ = ["simulate_shard", "simulate_sharded"]


def simulate_shard(
    fleet: FleetConfig,
    workload: Workload,
    index: int,
    count: int,
    options: SimOptions | None = None,
    *,
    duration_s: float | None = None,
    records_path: str | None = None,
) -> Summary:
    """Simulate shard `index` of `count` (a pure function; run it anywhere)."""
    sink: RecordSink | None = open_sink(records_path) if records_path else None
    try:
        part = shard(workload, index, count, duration_s=duration_s)
        return simulate(fleet, part, options, records=sink)
    finally:
        if sink is not None:
            sink.close()


def _part(path: str, i: int) -> str:
    p = Path(path)
    return str(p.with_name(f".{p.name}.part{i}{p.suffix}"))


def simulate_sharded(
    fleet: FleetConfig,
    workload: Workload,
    *,
    shards: int,
    processes: int = 1,
    options: SimOptions | None = None,
    duration_s: float | None = None,
    records_path: str | None = None,
    on_shard_done: Callable[[int, Summary], None] | None = None,
) -> Summary:
    """Simulate `shards` time slices on `processes` processes; the merged summary.

    The workload and fleet are pickled to the workers. Per-request rows of
    each shard go to a part file, concatenated into `records_path` in shard
    order at the end.
    """
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ConfigError("--shards", f"must be an integer >= 1, got {shards!r}")
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ConfigError("--processes", f"must be an integer >= 1, got {processes!r}")
    if duration_s is None:
        duration_s = workload.duration_hint()
    if duration_s is None:
        last = 0.0
        for r in workload:
            last = r.arrival_s
        duration_s = max(last, 1e-9)
    parts = [_part(records_path, i) if records_path else None for i in range(shards)]
    results: list[Summary | None] = [None] * shards
    if processes == 1 or shards == 1:
        for i in range(shards):
            results[i] = simulate_shard(
                fleet, workload, i, shards, options, duration_s=duration_s, records_path=parts[i]
            )
            if on_shard_done is not None:
                on_shard_done(i, results[i])  # type: ignore[arg-type]
    else:
        ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
        with ProcessPoolExecutor(max_workers=min(processes, shards), mp_context=ctx) as pool:
            futures = {
                pool.submit(
                    simulate_shard,
                    fleet,
                    workload,
                    i,
                    shards,
                    options,
                    duration_s=duration_s,
                    records_path=parts[i],
                ): i
                for i in range(shards)
            }
            for fut in futures:
                i = futures[fut]
                results[i] = fut.result()
                if on_shard_done is not None:
                    on_shard_done(i, results[i])  # type: ignore[arg-type]
    if records_path:
        _concat(records_path, [p for p in parts if p is not None])
    merged = results[0]
    assert merged is not None
    for s in results[1:]:
        assert s is not None
        merged = merged.merge(s)
    if not math.isfinite(merged.window_s):  # pragma: no cover
        merged.window_s = 0.0
    return merged


def _concat(path: str, parts: list[str]) -> None:
    if Path(path).suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        tables = [pq.read_table(p) for p in parts]
        writer = pq.ParquetWriter(path, tables[0].schema)
        for t in tables:
            writer.write_table(t)
        writer.close()
    else:
        with open(path, "wb") as out:
            for i, p in enumerate(parts):
                with open(p, "rb") as f:
                    if i > 0:
                        f.readline()  # each part repeats the header
                    shutil.copyfileobj(f, out)
    for p in parts:
        os.unlink(p)
