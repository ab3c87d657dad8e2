"""Simulated pool runs and the search over instance counts.

`search_pool_size` is the bracket-and-bisect search the verification runs
on every window (`_windows.run_window`, whole pools): start at a count; step
down (or up) by `step` (10%, or 4% from the earlier windows' mean), doubling
the step, until the verdict flips; then bisect to within 2% (or one
instance). A count whose first 30% of measured requests already misses the
SLO by a wide margin (P99 TTFT over twice the target: the queue is growing)
fails without the rest of the run.

`simulate_pool` is the sub-fleet run of the calibrated load curve
(`_calibrate`): G instances at rate lambda simulated as k = min(G, 4)
instances fed lambda k / G (the same per-instance load, at a cost that does
not grow with G), on the pool's own requests in trace order, retimed and
repeated when the trace is short. It is an estimate, not the verification:
with 4 instances to balance over, queues are much longer than in a pool of
hundreds (docs/planner.md, "What moved the old answer").
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
    """How hard the simulation check works.

    The verification (`_windows`, `_replicate`) simulates whole pools on
    windows of the input until the saving's 95% interval is tight enough;
    `requests` and `instances` size the runs of the calibrated load curve
    (`_calibrate`, a sub-fleet per load point) and of `simulate_pool`.
    """

    # Requests per sub-fleet run (the calibrated load curve).
    requests: int = 3000
    # Instances of a sub-fleet run (the calibrated load curve).
    instances: int = 4
    # Share of a run's measured part checked first (an early fail skips the rest).
    prefix: float = 0.3
    # Chooses the windows (their phase in the input) and the synthetic prompt bytes.
    seed: int = 0
    # Stop bisecting when hi - lo <= max(1, tolerance x hi); the crossing is
    # then interpolated between them.
    tolerance: float = 0.02
    # Stop adding windows when the saving's half-width is at most this (fraction).
    precision: float = 0.02
    confidence: float = 0.95
    min_windows: int = 4
    # None: follows the precision (`window_cap`).
    max_windows: int | None = None
    # Windows added per round after the first min_windows.
    batch: int = 2
    # Distinct input requests per window; None: the whole input up to 50,000
    # requests (windows are then rotations of it), else a run's measured
    # requests (>= 1,000; disjoint windows).
    block: int | None = None
    # Measured seconds of each run (at the fleet's rate), and at least this many requests.
    measure_s: float = 40.0
    min_measured: int = 2000
    # A pool of little traffic runs longer, to see at least this many requests.
    min_pool_measured: int = 300
    # Seconds filling the instances before measuring; None: per pool, from its
    # requests' durations (`_plan._pool_run`).
    warmup_s: float | None = None
    # Windows after the first round are probed (one run per pool at the mean
    # count, the crossing read with the pooled elasticity) when the ratio
    # there is within this (log) of 1; None: search every window.
    probe_band: float | None = 0.15

    @property
    def window_cap(self) -> int:
        """Windows simulated at most: `max_windows`, else 40 at 2 points of
        precision, scaled by (2 points / precision)^2 (160 at 1 point), so
        that a plan stops at the cap only when one window's saving spreads
        more than ~6.2 points (t sd / sqrt(40) = 2), whatever the precision
        asked: the half-width falls as 1 / sqrt(windows)."""
        if self.max_windows is not None:
            return self.max_windows
        return max(self.min_windows, math.ceil(40 * (0.02 / self.precision) ** 2 - 1e-9))

    def __post_init__(self) -> None:
        from dualpool.errors import ConfigError

        if not 0.0 < self.precision < 1.0:
            raise ConfigError("--precision", f"must be in (0, 1), got {self.precision!r}")
        if not 0.5 <= self.confidence < 1.0:
            raise ConfigError("confidence", f"must be in [0.5, 1), got {self.confidence!r}")
        if not 2 <= self.min_windows <= self.window_cap:
            raise ConfigError(
                "--min-windows",
                f"need 2 <= min windows ({self.min_windows}) <= max windows ({self.window_cap})",
            )
        if self.block is not None and self.block < 1:
            raise ConfigError("--window-requests", f"must be >= 1, got {self.block}")
        if not self.measure_s > 0:
            raise ConfigError("--measure-s", f"must be > 0, got {self.measure_s!r}")
        if self.probe_band is not None and not self.probe_band > 0:
            raise ConfigError("probe_band", f"must be > 0, got {self.probe_band!r}")
        if self.warmup_s is not None and self.warmup_s < 0:
            raise ConfigError("--warmup-s", f"must be >= 0, got {self.warmup_s!r}")


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
    """A RecordSink keeping TTFT and TPOT of completed requests (arrived from `since` s)."""

    def __init__(self, since: float = -math.inf) -> None:
        self.ttft: list[float] = []
        self.tpot: list[float] = []
        self.since = since

    def write(self, row: tuple[Any, ...]) -> None:
        if row[6] is not None and row[0] >= self.since:
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
    return pool_sim(summary, design.name, instances, k, ttft_slo, tpot_slo, sink, prefix_only)


def pool_sim(
    summary: Any,
    pool: str,
    instances: int,
    simulated: int,
    ttft_slo: float,
    tpot_slo: float,
    sink: _Collect | None,
    early_stop: bool,
    *,
    empty_meets: bool = False,
) -> PoolSim:
    """One pool's figures from a simulation summary, judged against the P99 targets.

    With `empty_meets`, a pool that saw no request misses nothing (P99s 0)."""
    st = summary.pools[pool]
    ttft99 = st.ttft.quantile(0.99) if st.completed else math.inf
    tpot99 = st.tpot.quantile(0.99) if st.completed else math.inf
    if empty_meets and st.requests == 0:
        ttft99 = tpot99 = 0.0  # nothing measured: nothing missed
    span = summary.span_s
    return PoolSim(
        instances=instances,
        simulated_instances=simulated,
        requests=st.requests,
        ttft_p50_s=st.ttft.quantile(0.5) if st.completed else math.inf,
        ttft_p99_s=ttft99,
        tpot_p50_s=st.tpot.quantile(0.5) if st.completed else math.inf,
        tpot_p99_s=tpot99,
        preemptions_per_1k=1000.0 * st.preemptions / st.requests if st.requests else 0.0,
        rejected=st.rejected,
        utilization=st.busy_s / (simulated * span) if span > 0 else 0.0,
        meets=ttft99 <= ttft_slo and tpot99 <= tpot_slo and st.rejected == 0,
        early_stop=early_stop,
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
    step: float = 0.1,
) -> SearchResult:
    """Smallest count in [1, limit] meeting the SLOs, starting at `start`.

    `evaluate(g, prefix_only)` simulates g instances. The verdict is taken
    as monotone in g (more instances, less load per instance): the bracket
    keeps every tried count below `lo` failing and every one above `hi`
    passing, so a noisy, non-monotone evaluator still gives an answer
    consistent with what it was shown (tests/planner/test_plan_search.py).
    `step`: the first step away from `start` (a fraction of it), doubled
    until the verdict flips.
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

    def first_step(g: int) -> int:
        return max(1, math.ceil(step * g))

    if ok(start):
        hi = start
        d = first_step(start)
        lo = hi - d
        while lo >= 1 and ok(lo):
            hi = lo
            d *= 2
            lo = hi - d
        lo = max(lo, 0)
    else:
        lo = start
        d = first_step(start)
        hi = min(lo + d, max(limit, lo + 1))
        while not ok(hi):
            if hi >= limit:
                return SearchResult(pool, start, hi, tuple(trials), False)
            lo = hi
            d *= 2
            hi = min(lo + d, limit)
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
