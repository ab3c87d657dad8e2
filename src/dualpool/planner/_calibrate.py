"""The calibrated SLO-aware estimate: the simulator's load curve of one pool, interpolated.

The closed-form queueing estimate (`_capacity.load_point`) is a mean-step
model: it misses how a 16K-token prefill chunk stalls every decode of its
step, how the batch composition varies step to step, and how the balancer
smooths arrivals. Rather than model those, measure them: simulate the pool's
sub-fleet (k instances, least-outstanding balancing, the pool's own requests
in trace order, exactly as `_verify.simulate_pool` does) at a few
per-instance arrival rates x and read the P99 TTFT and TPOT off each run.

With r(x) = max(TTFT99 / TTFT_SLO, TPOT99 / TPOT_SLO) (<= 1: the SLOs hold):

1. x0 = u mu (the discrete form's load). If r(x0) <= 1 the utilization cap
   binds: the count is the discrete form's.
2. Else halve x until r <= 1 (at most `max_halvings`; past that an idle
   instance misses the SLOs: unattainable, sized by the cap).
3. Bisect log x between the failing and the passing load `bisections` times
   (each halves the bracket's ratio: 4 steps from 2x leave 1.044x), then
   interpolate log r linearly in log x for the load where r = 1.
4. G = ceil(lambda_pool / x*). Pools smaller than k are checked count by
   count with k = G (the verifier's geometry for them).

About 8 to 12 short simulations per pool, independent of the pool's size.
This shares the simulator with the verification, so its agreement with the
verified count measures the interpolation and the run-to-run noise, not an
independent model; the closed-form estimate stays beside it for that.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dualpool.engine import GPUSpec, ModelSpec, StepTimeParams
from dualpool.planner._capacity import PoolDesign
from dualpool.planner._verify import PoolSim, VerifySettings, simulate_pool
from dualpool.workload import Request

__all__ = ["Calibrated", "CalibrationPoint", "CalibrationSettings", "calibrated_pool_size"]


@dataclass(frozen=True, slots=True)
class CalibrationSettings:
    """How the load curve is measured."""

    # Requests per simulated load; None: as many as the verifier's runs
    # (`VerifySettings.requests`), so both see the same P99 noise.
    requests: int | None = None
    # Instances of the simulated sub-fleet (the verifier's default).
    instances: int = 4
    bisections: int = 4
    max_halvings: int = 12
    seed: int = 0


@dataclass(frozen=True, slots=True)
class CalibrationPoint:
    """One simulated per-instance load."""

    rate: float
    ttft_p99_s: float
    tpot_p99_s: float
    # max(TTFT99 / TTFT_SLO, TPOT99 / TPOT_SLO).
    ratio: float


@dataclass(frozen=True, slots=True)
class Calibrated:
    """The calibrated count of one pool and the curve it came from."""

    instances: int
    # The largest per-instance load meeting the SLOs (req/s), interpolated.
    rate: float
    # "utilization", "ttft", "tpot" or "unattainable".
    binding: str
    attainable: bool
    points: tuple[CalibrationPoint, ...]


def calibrated_pool_size(
    model: ModelSpec,
    gpu: GPUSpec,
    design: PoolDesign,
    base: Sequence[Request],
    base_rate: float,
    pool_rate: float,
    mu: float,
    *,
    ttft_slo: float,
    tpot_slo: float,
    utilization: float,
    settings: CalibrationSettings,
    step_params: StepTimeParams | None = None,
    default_requests: int = 3000,
) -> Calibrated:
    """Smallest count whose simulated per-instance load meets both P99 SLOs (module doc)."""
    g0 = max(1, math.ceil(pool_rate / (utilization * mu) - 1e-9))
    k = max(1, settings.instances)
    points: list[CalibrationPoint] = []

    def run(instances: int, total_rate: float) -> PoolSim:
        n = settings.requests or default_requests
        vs = VerifySettings(requests=n, instances=instances, seed=settings.seed)
        return simulate_pool(
            model,
            gpu,
            design,
            instances,
            base,
            base_rate,
            total_rate,
            ttft_slo=ttft_slo,
            tpot_slo=tpot_slo,
            settings=vs,
            step_params=step_params,
        )

    def measure(x: float) -> CalibrationPoint:
        sim = run(k, k * x)
        r = max(sim.ttft_p99_s / ttft_slo, sim.tpot_p99_s / tpot_slo)
        pt = CalibrationPoint(x, sim.ttft_p99_s, sim.tpot_p99_s, r)
        points.append(pt)
        return pt

    def which(pt: CalibrationPoint) -> str:
        return "ttft" if pt.ttft_p99_s / ttft_slo >= pt.tpot_p99_s / tpot_slo else "tpot"

    x0 = pool_rate / g0
    first = measure(x0)
    if first.ratio <= 1.0:
        return _small(run, pool_rate, g0, k, "utilization", True, points, ttft_slo, tpot_slo)
    bad, good = first, None
    for _ in range(settings.max_halvings):
        pt = measure(bad.rate / 2.0)
        if pt.ratio <= 1.0:
            good = pt
            break
        bad = pt
    if good is None:
        return _small(run, pool_rate, g0, k, "unattainable", False, points, ttft_slo, tpot_slo)
    for _ in range(settings.bisections):
        pt = measure(math.sqrt(bad.rate * good.rate))
        if pt.ratio <= 1.0:
            good = pt
        else:
            bad = pt
    # log r linear in log x between the bracket; r(good) <= 1 < r(bad).
    lg, lb = math.log(good.rate), math.log(bad.rate)
    rg, rb = math.log(max(good.ratio, 1e-9)), math.log(bad.ratio)
    x = math.exp(lg + (0.0 - rg) * (lb - lg) / (rb - rg)) if rb > rg else good.rate
    x = min(max(x, good.rate), bad.rate)
    g = max(g0, math.ceil(pool_rate / x - 1e-9))
    return _small(run, pool_rate, g, k, which(bad), True, points, ttft_slo, tpot_slo, x, g0)


def _small(
    run: Callable[[int, float], PoolSim],
    pool_rate: float,
    g: int,
    k: int,
    binding: str,
    attainable: bool,
    points: list[CalibrationPoint],
    ttft_slo: float,
    tpot_slo: float,
    x: float | None = None,
    lo: int = 1,
) -> Calibrated:
    """Below k instances the sub-fleet is the pool itself: check counts 1 .. k - 1."""
    rate = pool_rate / g if x is None else x
    if attainable and g < k and binding != "utilization":
        for n in range(max(1, lo), k):
            sim = run(n, pool_rate)
            r = max(sim.ttft_p99_s / ttft_slo, sim.tpot_p99_s / tpot_slo)
            points.append(CalibrationPoint(pool_rate / n, sim.ttft_p99_s, sim.tpot_p99_s, r))
            if r <= 1.0 and sim.rejected == 0:
                return Calibrated(n, pool_rate / n, binding, True, tuple(points))
        return Calibrated(max(g, k), pool_rate / max(g, k), binding, True, tuple(points))
    return Calibrated(g, rate, binding, attainable, tuple(points))
