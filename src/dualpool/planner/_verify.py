"""Simulation-verified pool sizes: a seeded search over instance counts.

A pool of G instances at arrival rate lambda is simulated as a sub-fleet of
k = min(G, sim_instances) instances fed lambda k / G: every instance sees the
load it would see in the full pool (the same per-instance rate), at a cost
that does not grow with G. With fewer instances to balance over, queues are
a little longer than in the full pool, so the check errs on the safe side.
The pool's own requests (in trace order, retimed; repeated when the trace
is too short) feed the sub-fleet through `dualpool.simulator.simulate`.

Search: start at the analytic count; step down (or up) by 10%, doubling
the step, until the verdict flips; then bisect to within 2% (or one
instance). A count whose first 30% of requests already misses the SLO by
a wide margin (P99 TTFT over twice the target: the queue is growing) fails
without the rest of the run. Every simulation is seeded (the workload's
order and `SimOptions.seed`), so the search is repeatable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dualpool.engine import GPUSpec, ModelSpec, StepTimeParams
from dualpool.planner._capacity import PoolDesign
from dualpool.simulator import SLO, FleetConfig, PoolConfig, RecordSink, SimOptions, simulate
from dualpool.workload import Request

__all__ = ["PoolSim", "SearchResult", "VerifySettings", "search_pool_size", "simulate_pool"]


@dataclass(frozen=True, slots=True)
class VerifySettings:
    """How hard the simulation check works."""

    # Requests per simulated count.
    requests: int = 3000
    # Instances of the simulated sub-fleet (at most).
    instances: int = 4
    # Share of the run checked first (an early fail skips the rest).
    prefix: float = 0.3
    seed: int = 0
    # Stop bisecting when hi - lo <= max(1, tolerance x hi).
    tolerance: float = 0.02


@dataclass(frozen=True, slots=True)
class PoolSim:
    """One simulated count of one pool."""

    instances: int
    simulated_instances: int
    requests: int
    ttft_p50_s: float
    ttft_p99_s: float
    tpot_p50_s: float
    tpot_p99_s: float
    preemptions_per_1k: float
    rejected: int
    utilization: float
    meets: bool
    # True when only the prefix ran (an early fail).
    early_stop: bool
    # Per-request TTFT and TPOT (s) for plots; empty unless asked for.
    ttft: tuple[float, ...] = field(default=(), repr=False)
    tpot: tuple[float, ...] = field(default=(), repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "instances": self.instances,
            "simulated_instances": self.simulated_instances,
            "requests": self.requests,
            "ttft_p50_s": self.ttft_p50_s,
            "ttft_p99_s": self.ttft_p99_s,
            "tpot_p50_s": self.tpot_p50_s,
            "tpot_p99_s": self.tpot_p99_s,
            "preemptions_per_1k": self.preemptions_per_1k,
            "rejected": self.rejected,
            "utilization": self.utilization,
            "meets_slo": self.meets,
            "early_stop": self.early_stop,
        }


class _Collect(RecordSink):
    """A RecordSink keeping TTFT and TPOT of completed requests."""

    def __init__(self) -> None:
        self.ttft: list[float] = []
        self.tpot: list[float] = []

    def write(self, row: tuple[Any, ...]) -> None:
        if row[6] is not None:
            self.ttft.append(float(row[6]))
            self.tpot.append(float(row[7]))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _stream(base: Sequence[Request], base_rate: float, rate: float, n: int) -> list[Request]:
    """n requests of `base` (repeated end to end) retimed from base_rate to rate."""
    if not base:
        return []
    f = base_rate / rate
    span = base[-1].arrival_s - base[0].arrival_s + 1.0 / base_rate
    t0 = base[0].arrival_s
    out: list[Request] = []
    lap = 0
    while len(out) < n:
        off = lap * span
        for r in base:
            if len(out) >= n:
                break
            out.append(r.at((r.arrival_s - t0 + off) * f))
        lap += 1
    return out


def simulate_pool(
    model: ModelSpec,
    gpu: GPUSpec,
    design: PoolDesign,
    instances: int,
    base: Sequence[Request],
    base_rate: float,
    pool_rate: float,
    *,
    ttft_slo: float,
    tpot_slo: float,
    settings: VerifySettings,
    step_params: StepTimeParams | None = None,
    prefix_only: bool = False,
    keep_samples: bool = False,
) -> PoolSim:
    """Simulate `instances` of this pool at `pool_rate` (see the module doc)."""
    k = min(instances, settings.instances)
    sub_rate = pool_rate * k / instances
    n = settings.requests
    if prefix_only:
        n = max(50, int(n * settings.prefix))
    reqs = _stream(base, base_rate, sub_rate, n)
    fleet = FleetConfig(
        model,
        gpu,
        (PoolConfig(design.name, design.engine, k, None),),
        step_params or StepTimeParams(),
    )
    slo = SLO(ttft_s=ttft_slo, tpot_s=tpot_slo)
    # The first 10% of the run (at most a minute) fills the instances.
    duration = reqs[-1].arrival_s - reqs[0].arrival_s if reqs else 0.0
    opts = SimOptions(slo=slo, seed=settings.seed, warmup_s=min(60.0, 0.1 * duration))
    sink = _Collect() if keep_samples else None
    summary = simulate(fleet, reqs, opts, records=sink)
    st = summary.pools[design.name]
    ttft99 = st.ttft.quantile(0.99) if st.completed else math.inf
    tpot99 = st.tpot.quantile(0.99) if st.completed else math.inf
    meets = ttft99 <= ttft_slo and tpot99 <= tpot_slo and st.rejected == 0
    span = summary.span_s
    return PoolSim(
        instances=instances,
        simulated_instances=k,
        requests=st.requests,
        ttft_p50_s=st.ttft.quantile(0.5) if st.completed else math.inf,
        ttft_p99_s=ttft99,
        tpot_p50_s=st.tpot.quantile(0.5) if st.completed else math.inf,
        tpot_p99_s=tpot99,
        preemptions_per_1k=1000.0 * st.preemptions / st.requests if st.requests else 0.0,
        rejected=st.rejected,
        utilization=st.busy_s / (k * span) if span > 0 else 0.0,
        meets=meets,
        early_stop=prefix_only,
        ttft=tuple(sink.ttft) if sink else (),
        tpot=tuple(sink.tpot) if sink else (),
    )


@dataclass(frozen=True, slots=True)
class SearchResult:
    """The smallest simulated count that met the SLOs, and the evidence."""

    pool: str
    start: int
    instances: int
    # Every count tried, in order.
    trials: tuple[PoolSim, ...]
    # False when no count up to the search limit met the SLOs.
    found: bool

    @property
    def chosen(self) -> PoolSim:
        for t in reversed(self.trials):
            if t.instances == self.instances and not t.early_stop:
                return t
        return self.trials[-1]

    def as_dict(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "start": self.start,
            "instances": self.instances,
            "found": self.found,
            "trials": [t.as_dict() for t in self.trials],
            "chosen": self.chosen.as_dict(),
        }


def search_pool_size(
    pool: str,
    start: int,
    evaluate: Callable[[int, bool], PoolSim],
    *,
    ttft_slo: float,
    tolerance: float = 0.02,
    limit: int | None = None,
) -> SearchResult:
    """Smallest count in [1, limit] meeting the SLOs, starting at `start`.

    `evaluate(g, prefix_only)` simulates g instances. The verdict is taken
    as monotone in g (more instances, less load per instance).
    """
    start = max(1, start)
    limit = limit or max(256, start * 64)
    trials: list[PoolSim] = []
    seen: dict[int, PoolSim] = {}

    def ok(g: int) -> bool:
        if g in seen:
            return seen[g].meets
        first = evaluate(g, True)
        if not first.meets and first.ttft_p99_s > 2.0 * ttft_slo:
            trials.append(first)
            seen[g] = first
            return False
        full = evaluate(g, False)
        trials.append(full)
        seen[g] = full
        return full.meets

    def step(g: int) -> int:
        return max(1, math.ceil(0.1 * g))

    if ok(start):
        hi = start
        d = step(start)
        lo = hi - d
        while lo >= 1 and ok(lo):
            hi = lo
            d *= 2
            lo = hi - d
        lo = max(lo, 0)
    else:
        lo = start
        d = step(start)
        hi = lo + d
        while not ok(hi):
            lo = hi
            d *= 2
            hi = lo + d
            if hi > limit:
                return SearchResult(pool, start, lo, tuple(trials), False)
    while hi - lo > max(1, math.floor(tolerance * hi)):
        mid = (lo + hi) // 2
        if mid < 1:
            break
        if ok(mid):
            hi = mid
        else:
            lo = mid
    if hi not in seen or seen[hi].early_stop:
        ok(hi)
    return SearchResult(pool, start, hi, tuple(trials), True)
