"""The fleet simulator: pools of engine instances fed a workload through the real router.

    fleet.py       FleetConfig / PoolConfig (code or YAML), the paper's two pools, a homogeneous fleet
    sizing.py      instance counts for a target utilization (saturated engine throughput)
    balancer.py    intra-pool balancing: round robin, least outstanding, least KV (ABC + factory)
    simulation.py  the discrete-event loop (Simulation, simulate, SimOptions)
    summary.py     mergeable per-pool and fleet results (Summary, PoolStats, SLO)
    sketch.py      LogHistogram: bounded, mergeable quantiles at 1% relative accuracy
    records.py     per-request rows to CSV / Parquet
    parallel.py    time shards across processes, summaries merged

A simulation is a pure function of (fleet, workload slice, options) returning
a `Summary` that merges, so sweeps split across processes or machines.
"""

from dualpool.simulator.balancer import (
    Balancer,
    BalancerKind,
    LeastKV,
    LeastOutstanding,
    RoundRobin,
    make_balancer,
)
from dualpool.simulator.fleet import (
    LONG_ENGINE,
    SHORT_ENGINE,
    FleetConfig,
    PoolConfig,
    dual_pool_fleet,
    homogeneous_fleet,
    load_fleet,
)
from dualpool.simulator.parallel import simulate_shard, simulate_sharded
from dualpool.simulator.records import COLUMNS, CsvSink, ParquetSink, RecordSink, open_sink
from dualpool.simulator.simulation import SimOptions, Simulation, simulate
from dualpool.simulator.sizing import PoolSizing, saturated_throughput, size_fleet
from dualpool.simulator.sketch import LogHistogram
from dualpool.simulator.summary import SLO, PoolStats, Summary

__all__ = [
    "COLUMNS",
    "LONG_ENGINE",
    "SHORT_ENGINE",
    "SLO",
    "Balancer",
    "BalancerKind",
    "CsvSink",
    "FleetConfig",
    "LeastKV",
    "LeastOutstanding",
    "LogHistogram",
    "ParquetSink",
    "PoolConfig",
    "PoolSizing",
    "PoolStats",
    "RecordSink",
    "RoundRobin",
    "SimOptions",
    "Simulation",
    "Summary",
    "dual_pool_fleet",
    "homogeneous_fleet",
    "load_fleet",
    "make_balancer",
    "open_sink",
    "saturated_throughput",
    "simulate",
    "simulate_shard",
    "simulate_sharded",
    "size_fleet",
]
