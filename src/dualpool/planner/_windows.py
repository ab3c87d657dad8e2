"""Replications for verification: windows of the input, whole pools, common random numbers.

A *window* is one replication of the fleet's traffic: a block of `block`
consecutive requests of the input (a trace in its own order, or a synthetic
stream), starting at `offset(w) = (phase + w block) mod n` (circular; the
phase is drawn from `--seed`, so the seed chooses the windows on a trace
too). The block is retimed to the fleet's rate (its own mean rate becomes
`rate`: `--rate` is the rate the fleet is sized for; the trace gives the mix
and the shape of the arrivals) and looped end to end until the run holds
`run_requests` requests: `warmup_s` seconds that fill the instances, then
the measured part.

Common random numbers: every pool of every fleet (homogeneous, short,
long, each sweep point) is simulated on the *same* window: the same
requests at the same arrival times, each pool taking the requests whose
budget falls in its range. The homogeneous and the split fleet are then
judged on identical traffic, and the difference between them carries far
less noise than either; so do counts of one pool compared across sizes.

Windows are disjoint while w < n // block; past that they wrap and overlap
(the plan says so: intervals from overlapping windows are too narrow).

Whole pools: a pool of G instances is simulated as G instances at the
pool's full rate (`dualpool.simulator.simulate`, least-outstanding
balancing), never as a sub-fleet; the simulator's cost grows with requests,
not with instances.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from dualpool.engine import GPUSpec, ModelSpec, StepTimeParams
from dualpool.planner._capacity import PoolDesign
from dualpool.planner._verify import PoolSim, SearchResult, _Collect, pool_sim, search_pool_size
from dualpool.simulator import SLO, FleetConfig, PoolConfig, SimOptions, simulate
from dualpool.workload import Request

__all__ = [
    "WindowJob",
    "WindowOutcome",
    "WindowPlan",
    "crossing",
    "envelope_log_ratio",
    "pooled_slope",
    "run_window",
    "simulate_whole_pool",
    "window_reading",
    "window_stream",
]


# log of the ratio given to a run that failed outright (r = inf).
_LOG_FAIL = math.log(1e6)


@dataclass(frozen=True, slots=True)
class WindowPlan:
    """Where the windows lie in the input and how long a run is."""

    # Requests in the input (the circle the windows lie on).
    n: int
    # Consecutive input requests per window.
    block: int
    # Offset of window 0 (seeded).
    phase: int
    # Fleet requests per run (the block looped): warm-up + measured.
    run_requests: int
    # Seconds at the start of a run that fill the instances (not measured).
    warmup_s: float
    # Fleet arrival rate, req/s.
    rate: float

    def offset(self, w: int) -> int:
        """Window w's first request: a block apart while disjoint windows remain,
        then rotations spread by the golden ratio (never the same twice)."""
        d = self.disjoint
        if w < d:
            return (self.phase + w * self.block) % self.n
        frac = ((w - d + 1) * 0.6180339887498949) % 1.0
        return (self.phase + int(frac * self.n)) % self.n

    @property
    def disjoint(self) -> int:
        """How many windows fit without sharing a request."""
        return max(1, self.n // self.block)

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_requests": self.n,
            "block_requests": self.block,
            "run_requests": self.run_requests,
            "warmup_s": self.warmup_s,
            "measured_s": self.run_requests / self.rate - self.warmup_s,
            "disjoint_windows": self.disjoint,
            "phase": self.phase,
        }


def window_stream(
    arrival_s: npt.NDArray[np.float64], source_rate: float, plan: WindowPlan, w: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Arrival times (s, from 0) and input indices of window w's fleet stream."""
    n, b = plan.n, min(plan.block, plan.n)
    idx = (plan.offset(w) + np.arange(b, dtype=np.int64)) % n
    a = arrival_s[idx]
    gaps = np.diff(a)
    mean_gap = 1.0 / source_rate if source_rate > 0 else 1.0
    # Where the block wraps around the input's end, and between loops, one
    # mean gap of the source.
    gaps = np.where(gaps < 0, mean_gap, gaps)
    g = np.concatenate(([mean_gap], gaps))
    span = float(g.sum())
    g = g * (b / (span * plan.rate) if span > 0 else 1.0 / plan.rate)
    loops = -(-plan.run_requests // b)
    times = np.cumsum(np.tile(g, loops))[: plan.run_requests]
    times -= times[0]
    return times, np.tile(idx, loops)[: plan.run_requests]


def simulate_whole_pool(
    model: ModelSpec,
    gpu: GPUSpec,
    design: PoolDesign,
    instances: int,
    requests: list[Request],
    *,
    warmup_s: float,
    ttft_slo: float,
    tpot_slo: float,
    step_params: StepTimeParams | None = None,
    seed: int = 0,
    prefix_until_s: float | None = None,
    keep_samples: bool = False,
) -> PoolSim:
    """All `instances` of the pool on `requests` (already at the pool's rate)."""
    if prefix_until_s is not None:
        requests = [r for r in requests if r.arrival_s <= prefix_until_s]
    fleet = FleetConfig(
        model,
        gpu,
        (PoolConfig(design.name, design.engine, instances, None),),
        step_params or StepTimeParams(),
    )
    opts = SimOptions(slo=SLO(ttft_s=ttft_slo, tpot_s=tpot_slo), seed=seed, warmup_s=warmup_s)
    # The samples, like the summary, leave the warm-up out.
    t0 = requests[0].arrival_s if requests else 0.0
    sink = _Collect(t0 + warmup_s)
    summary = simulate(fleet, requests, opts, records=sink)
    sim = pool_sim(
        summary,
        design.name,
        instances,
        instances,
        ttft_slo,
        tpot_slo,
        sink if keep_samples else None,
        prefix_until_s is not None,
        empty_meets=True,
    )
    return exact_p99(sim, sink, ttft_slo, tpot_slo)


def exact_p99(sim: PoolSim, sink: _Collect, ttft_slo: float, tpot_slo: float) -> PoolSim:
    """`sim` with its P99s computed from every measured request, not the sketch.

    The simulator's quantile sketch answers within 1% (buckets 2% wide):
    enough to report a P99, too coarse to locate where the SLO ratio crosses
    1 when it falls slowly with the count (ShareGPT's P99 TTFT, a few
    percent above its idle floor, moves ~0.3% per 1% of instances: one
    bucket is ~7% of the count; docs/planner.md).
    """
    if not sink.ttft or sim.rejected:
        return sim
    ttft99 = float(np.quantile(np.asarray(sink.ttft), 0.99))
    tpot99 = float(np.quantile(np.asarray(sink.tpot), 0.99))
    return replace(
        sim,
        ttft_p99_s=ttft99,
        tpot_p99_s=tpot99,
        meets=ttft99 <= ttft_slo and tpot99 <= tpot_slo and sim.rejected == 0,
    )


def ratio(sim: PoolSim, ttft_slo: float, tpot_slo: float) -> float:
    """max(P99 TTFT / target, P99 TPOT / target); inf with rejections (<= 1: meets)."""
    if sim.rejected:
        return math.inf
    return max(sim.ttft_p99_s / ttft_slo, sim.tpot_p99_s / tpot_slo)


def crossing(result: SearchResult, ttft_slo: float, tpot_slo: float) -> float:
    """The count where the SLO ratio crosses 1, interpolated in log-log.

    Between the search's last failing count (full run) and its chosen
    passing count; the chosen count itself when there is no such bracket.
    """
    hi = result.instances
    if not result.found:
        return float(hi)
    below = [t for t in result.trials if t.instances < hi and not t.early_stop]
    fails = [t for t in result.trials if t.instances < hi]
    if not fails:
        return float(hi)
    lo_t = max(fails, key=lambda t: t.instances)
    if lo_t.early_stop or lo_t not in below:
        return float(hi)
    r_lo = ratio(lo_t, ttft_slo, tpot_slo)
    r_hi = ratio(result.chosen, ttft_slo, tpot_slo)
    if not (math.isfinite(r_lo) and r_lo > 1.0 and 0.0 < r_hi <= 1.0):
        return float(hi)
    lg_lo, lg_hi = math.log(lo_t.instances), math.log(hi)
    lr_lo, lr_hi = math.log(r_lo), math.log(r_hi)
    x = lg_lo + (0.0 - lr_lo) * (lg_hi - lg_lo) / (lr_hi - lr_lo)
    return min(max(math.exp(x), float(lo_t.instances)), float(hi))


def window_reading(
    trials: Sequence[PoolSim],
    center: float,
    slope_ttft: float,
    slope_tpot: float,
    ttft_slo: float,
    tpot_slo: float,
    band: float = 0.10,
) -> float | None:
    """The count one window needs, read off every run of it near the crossing.

    Each full run of the pool at a count G within `band` (log) of `center`
    (the crossing so far, common to the windows) is one reading of the
    window's crossing, G r_m^(1/beta_m) for each metric m (TTFT, TPOT; the
    larger: r is their max), the power law with the pooled elasticities;
    the window's count is the geometric mean of its readings. None without
    such a run.

    Why several readings and not the interpolated crossing: a run's P99s
    carry noise of their own that is close to independent from one count
    to the next on the same window (ShareGPT's short pool at 1,900, 1,940
    and 1,980 instances on one window: P99 TTFT 2.03, 1.90, 2.03 s;
    docs/planner.md), so two runs of a window near the crossing are two
    readings, and the secant between a search's last two counts (a few
    percent apart) turns that noise into a slope anywhere from ~0 to ~2.
    """
    logs = []
    for t in trials:
        if t.early_stop or t.rejected or t.instances <= 0:
            continue
        if abs(math.log(t.instances / center)) > band:
            continue
        r_ttft, r_tpot = t.ttft_p99_s / ttft_slo, t.tpot_p99_s / tpot_slo
        if not (0.0 < r_ttft < math.inf and 0.0 <= r_tpot < math.inf):
            continue
        x = math.log(t.instances) + math.log(r_ttft) / slope_ttft
        if r_tpot > 0:
            x = max(x, math.log(t.instances) + math.log(r_tpot) / slope_tpot)
        logs.append(x)
    if not logs:
        return None
    return math.exp(math.fsum(logs) / len(logs))


def envelope_log_ratio(
    trials: list[tuple[int, float]],
    counts: npt.NDArray[np.int64],
    slope: float | None = None,
) -> npt.NDArray[np.float64]:
    """log r at `counts` from one window's trials (count, ratio), made monotone.

    More instances never hurt: each trial's ratio is raised to the largest
    ratio seen at any count above it (a running maximum from the right, the
    conservative envelope); between trials log r is linear in log count;
    below the smallest trial it is +inf (unknown: fails), above the
    largest it stays at the largest's. With `slope` (a window probed at one
    count, `run_window`), log r falls by `slope` per unit of log count
    outside the trials on both sides instead (the pooled elasticity).
    """
    pts: dict[int, float] = {}
    for g, r in trials:
        # A run that failed outright (rejections, an early stop at inf) counts
        # as far over the target, finite so that it interpolates.
        x = min(math.log(r), _LOG_FAIL) if r > 0 else -50.0
        pts[g] = max(pts.get(g, -math.inf), x)
    gs = np.array(sorted(pts), dtype=np.float64)
    env = np.maximum.accumulate(np.array([pts[int(g)] for g in gs])[::-1])[::-1]
    out = np.full(counts.shape, math.inf)
    c = counts.astype(np.float64)
    if slope is not None and slope > 0:
        lc = np.log(c)
        out = np.interp(lc, np.log(gs), env)
        out = np.where(lc < math.log(gs[0]), env[0] + slope * (math.log(gs[0]) - lc), out)
        return np.where(lc > math.log(gs[-1]), env[-1] - slope * (lc - math.log(gs[-1])), out)
    ok = c >= gs[0]
    out[ok] = np.interp(np.log(c[ok]), np.log(gs), env)
    return out


def pooled_slope(
    windows: list[list[tuple[int, float]]],
    centers: list[float],
    band: float = 0.15,
    bounds: tuple[float, float] = (0.3, 5.0),
) -> float | None:
    """The elasticity -d log r / d log G near the crossing, pooled over windows.

    Least squares of log r on log G with one intercept per window (the
    windows differ in level, not in how the ratio falls with G), over each
    window's finite trials within `band` of its crossing `centers[i]`;
    clipped to `bounds`. None when fewer than 2 windows have 2 such trials.
    """
    sxy = sxx = 0.0
    used = 0
    for trials, c in zip(windows, centers, strict=True):
        pts = [
            (math.log(g), math.log(r))
            for g, r in trials
            if 0 < r < math.inf and abs(math.log(g / c)) <= band
        ]
        xs = {x for x, _ in pts}
        if len(xs) < 2:
            continue
        mx = sum(x for x, _ in pts) / len(pts)
        my = sum(y for _, y in pts) / len(pts)
        sxy += sum((x - mx) * (y - my) for x, y in pts)
        sxx += sum((x - mx) ** 2 for x, _ in pts)
        used += 1
    if used < 2 or sxx <= 0:
        return None
    return min(max(-sxy / sxx, bounds[0]), bounds[1])


@dataclass(frozen=True, slots=True)
class WindowJob:
    """One pool on one window: the search for its count, or one count (picklable)."""

    key: str
    design: PoolDesign
    model: ModelSpec
    gpu: GPUSpec
    arrival_s: npt.NDArray[np.float64]
    prompt: npt.NDArray[np.int64]
    output: npt.NDArray[np.int64]
    budget: npt.NDArray[np.int64]
    source_rate: float
    # Budgets in (lo, hi] reach this pool.
    lo: int
    hi: int
    window: int
    plan: WindowPlan
    start: int
    ttft_slo_s: float
    tpot_slo_s: float
    step_params: StepTimeParams | None
    seed: int = 0
    # Evaluate exactly this count (no search): the final round, or a pool
    # no count can bring under the SLOs.
    evaluate_at: int | None = None
    keep_samples: bool = False
    tolerance: float = 0.02
    step: float = 0.1
    # Share of the measured part run first; a count whose P99 TTFT there is
    # over twice the target fails without the rest.
    prefix: float = 0.3
    limit: int | None = None
    # Probe: run `start` only and read the crossing off the pooled
    # elasticities of the TTFT and the TPOT ratio, `slope` and `slope_tpot`
    # (the larger of start x r_m^(1/slope_m)), when r is within `probe_band`
    # of 1 (log); else search from there.
    slope: float | None = None
    slope_tpot: float | None = None
    probe_band: float = 0.15

    def requests(self) -> list[Request]:
        times, idx = window_stream(self.arrival_s, self.source_rate, self.plan, self.window)
        b = self.budget[idx]
        sel = (b > self.lo) & (b <= self.hi)
        t = times[sel].tolist()
        j = idx[sel]
        return [
            Request(a, p, o, None)
            for a, p, o in zip(t, self.prompt[j].tolist(), self.output[j].tolist(), strict=True)
        ]


@dataclass(frozen=True, slots=True)
class WindowOutcome:
    """A pool's count on one window: the interpolated crossing and the evidence."""

    key: str
    window: int
    # The count where the SLO ratio crosses 1 (fractional, interpolated).
    crossing: float
    # The smallest count found to meet the SLOs.
    instances: int
    found: bool
    trials: tuple[PoolSim, ...] = field(repr=False)
    # Pool requests in the run (warm-up included).
    requests: int = 0
    # The elasticity the crossing was read with (a probed window), else None.
    slope: float | None = None

    def ratios(self, ttft_slo: float, tpot_slo: float) -> list[tuple[int, float]]:
        return [(t.instances, ratio(t, ttft_slo, tpot_slo)) for t in self.trials]


def run_window(job: WindowJob) -> WindowOutcome:
    """Search (or evaluate) one pool's count on one window (module doc)."""
    reqs = job.requests()
    if not reqs:
        # This window sends the pool nothing: its smallest size serves it.
        g = job.evaluate_at or 1
        empty = PoolSim(g, g, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0.0, True, False)
        return WindowOutcome(job.key, job.window, float(g), g, True, (empty,), 0)
    warm = job.plan.warmup_s
    end = reqs[-1].arrival_s
    prefix_until = warm + job.prefix * max(0.0, end - warm)

    known: dict[int, PoolSim] = {}

    def evaluate(g: int, prefix: bool, keep: bool = False) -> PoolSim:
        if g in known:
            # Probed already (a full run answers the prefix check too).
            return known[g]
        return simulate_whole_pool(
            job.model,
            job.gpu,
            job.design,
            g,
            reqs,
            warmup_s=warm,
            ttft_slo=job.ttft_slo_s,
            tpot_slo=job.tpot_slo_s,
            step_params=job.step_params,
            seed=job.seed,
            prefix_until_s=prefix_until if prefix else None,
            keep_samples=keep,
        )

    if job.evaluate_at is not None:
        sim = evaluate(job.evaluate_at, False, job.keep_samples)
        return WindowOutcome(
            job.key,
            job.window,
            float(job.evaluate_at),
            job.evaluate_at,
            sim.meets,
            (sim,),
            len(reqs),
        )
    if job.slope is not None:
        sim = evaluate(job.start, False)
        r = ratio(sim, job.ttft_slo_s, job.tpot_slo_s)
        r_ttft = sim.ttft_p99_s / job.ttft_slo_s
        r_tpot = sim.tpot_p99_s / job.tpot_slo_s
        if 0 < r < math.inf and r_ttft > 0 and abs(math.log(r)) <= job.probe_band:
            # Each metric's ratio on its own power law; the window needs the
            # larger count (r is their max, with a kink where they cross).
            b_tpot = job.slope_tpot or job.slope
            x_ttft = job.start * r_ttft ** (1.0 / job.slope)
            x_tpot = job.start * r_tpot ** (1.0 / b_tpot) if r_tpot > 0 else 0.0
            x = max(x_ttft, x_tpot)
            b = job.slope if x_ttft >= x_tpot else b_tpot
            g = job.start if sim.meets else math.ceil(x)
            # A flat ratio (a small slope) reads far: searched instead.
            if abs(math.log(x / job.start)) <= job.probe_band:
                return WindowOutcome(job.key, job.window, x, g, True, (sim,), len(reqs), slope=b)
        known[job.start] = sim
    ev: Callable[[int, bool], PoolSim] = evaluate
    res = search_pool_size(
        job.design.name,
        job.start,
        ev,
        ttft_slo=job.ttft_slo_s,
        tolerance=job.tolerance,
        limit=job.limit,
        step=job.step,
    )
    x = crossing(res, job.ttft_slo_s, job.tpot_slo_s)
    return WindowOutcome(job.key, job.window, x, res.instances, res.found, res.trials, len(reqs))
