"""`dualpool plan --adaptive`: the split fleet with the adaptive B_short, against the static one.

The verification (`_windows`, `_replicate`) sizes each pool alone, on the
requests whose budget is its own: that is the static threshold. With the
adaptive controller (`policy.ThresholdController`, docs/adaptive.md) the
threshold moves with the pools' load, so the pools are no longer independent:
a request's pool depends on the other pool's state. So this step simulates the
*whole* split fleet, both pools behind one `Router` (the gateway's objects),
on windows of the workload at the plan's rate, once with the static threshold
and once with the controller, on the same requests and arrival times:

1. at the provisioned counts: each window's SLO ratio r = max(P99 TTFT /
   target, P99 TPOT / target) over all the fleet's requests, static and
   adaptive, and their paired difference in log r (95% t-interval over windows);
2. the fleet each configuration needs: from the provisioned counts, a
   coordinate search per pool (steps of 20% of its count, halved down to 2%
   or one instance; grown by 20% steps first if the provisioned fleet misses)
   for the fewest GPUs whose mean log r over the windows is <= 0;
3. the gain from the controller: static GPUs needed minus adaptive GPUs
   needed, on the same windows, by the same search.

Windows are `windows` blocks of consecutive requests of the workload (phase from
the seed, disjoint while the workload holds them), retimed to the plan's rate,
`warmup_s + measure_s` long; only requests arriving after the warm-up count.
The controller decides every `interval_s` (2 s: the windows last about a
minute, so it is given a minute's worth of decisions; at its default 15 s it
would move a few times per window). A stationary window can only show what the
controller gains from balancing the two pools at this rate: its gain from
following a mix that drifts over a day is what `benchmarks/adaptive_threshold.py`
measures. Pure simulation: no I/O; serial (the caller shows progress).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from dualpool.engine import EngineConfig, GPUSpec, ModelSpec, StepTimeParams
from dualpool.planner import Interval, Mix, interval
from dualpool.policy import AdaptiveConfig
from dualpool.simulator import SLO, FleetConfig, PoolConfig, SimOptions, Simulation
from dualpool.workload import Request

__all__ = ["AdaptivePlanSettings", "adaptive_plan", "fleet_windows"]


@dataclass(frozen=True, slots=True)
class AdaptivePlanSettings:
    """How `plan --adaptive` simulates the whole split fleet."""

    windows: int = 4
    measure_s: float = 60.0
    warmup_s: float = 20.0
    seed: int = 0
    controller: AdaptiveConfig = field(
        default_factory=lambda: AdaptiveConfig(interval_s=2.0, stale_s=10.0, revert_s=30.0)
    )
    # The count search: first step (share of the count), last step.
    step: float = 0.2
    tolerance: float = 0.02
    confidence: float = 0.95


def fleet_windows(
    mix: Mix, rate: float, seconds: float, windows: int, seed: int
) -> list[list[Request]]:
    """`windows` blocks of consecutive requests retimed to `rate`, each `seconds` long.

    The block's inter-arrival gaps are the workload's own, scaled so that the
    block's mean rate is `rate`; a block longer than the workload wraps around
    (the wrap's gap is the mean gap).
    """
    n = len(mix)
    need = max(2, math.ceil(rate * seconds))
    gaps = np.diff(mix.arrival_s)
    gaps = np.append(gaps, float(np.mean(gaps)) if gaps.size else 1.0)
    gaps = np.maximum(gaps, 0.0)
    rng = np.random.default_rng(seed)
    phase = int(rng.integers(0, n))
    stride = need if need * windows <= n else max(1, n // windows)
    out: list[list[Request]] = []
    for w in range(windows):
        idx = (phase + w * stride + np.arange(need)) % n
        g = gaps[idx]
        mean = float(np.mean(g[:-1])) if need > 1 else 0.0
        scale = (1.0 / rate) / mean if mean > 0 else 0.0
        t = (
            np.concatenate(([0.0], np.cumsum(g[:-1] * scale)))
            if scale > 0
            else np.arange(need) / rate
        )
        out.append(
            [
                Request(float(a), int(p), int(o), None)
                for a, p, o in zip(
                    t.tolist(), mix.prompt[idx].tolist(), mix.output[idx].tolist(), strict=True
                )
            ]
        )
    return out


@dataclass(frozen=True, slots=True)
class _Run:
    ratio: float
    ttft_p99_s: float
    tpot_p99_s: float
    threshold_mean: float
    moves: int


def _fleet_of(
    model: ModelSpec,
    gpu: GPUSpec,
    pools: Sequence[Mapping[str, Any]],
    counts: Sequence[int],
    step_params: StepTimeParams | None,
) -> FleetConfig:
    cfgs = []
    for p, n in zip(pools, counts, strict=True):
        c = p["config"]
        engine = EngineConfig(
            max_model_len=int(c["max_model_len"]),
            max_num_seqs=int(c["max_num_seqs"]),
            max_num_batched_tokens=int(c["max_num_batched_tokens"]),
            tensor_parallel_size=int(c["tensor_parallel_size"]),
        )
        t = c.get("threshold")
        cfgs.append(
            PoolConfig(
                str(p["pool"]),
                engine,
                max(1, int(n)),
                int(t) if t is not None and int(t) < engine.max_model_len else None,
            )
        )
    return FleetConfig(model, gpu, tuple(cfgs), step_params or StepTimeParams())


def _simulate(
    fleet: FleetConfig, reqs: list[Request], s: AdaptivePlanSettings, slo: SLO, adaptive: bool
) -> _Run:
    opts = SimOptions(
        warmup_s=s.warmup_s, seed=s.seed, slo=slo, adaptive=s.controller if adaptive else None
    )
    sim = Simulation(fleet, opts)
    summary = sim.run(reqs)
    st = summary.fleet_stats()
    ttft = st.ttft.quantile(0.99)
    tpot = st.tpot.quantile(0.99)
    # Refused requests are misses: over 1% of them and the P99 cannot be met.
    refused = summary.rejected / max(1, summary.requests)
    r = max(ttft / slo.ttft_s, tpot / slo.tpot_s)
    if refused > 0.01 or not math.isfinite(r):
        r = max(r if math.isfinite(r) else 0.0, 1e3)
    log = sim.threshold_log
    if log:
        end = reqs[-1].arrival_s if reqs else 0.0
        acc = 0.0
        for (t0, b), (t1, _) in zip(log, [*log[1:], (end, 0)], strict=True):
            acc += b * max(0.0, t1 - t0)
        t_mean = acc / end if end > 0 else float(log[-1][1])
    else:
        t_mean = float(fleet.pools[0].spec().effective_threshold)
    return _Run(r, ttft, tpot, t_mean, max(0, len(log) - 1))


def _exp_ci(iv: Interval) -> list[float] | None:
    """The interval of a mean log, back on the ratio's scale (None: too few windows)."""
    if not math.isfinite(iv.half_width):
        return None
    return [math.exp(iv.low), math.exp(iv.high)]


def adaptive_plan(
    plan_result: Mapping[str, Any],
    mix: Mix,
    *,
    model: ModelSpec,
    gpu: GPUSpec,
    rate: float,
    slo: SLO,
    step_params: StepTimeParams | None = None,
    settings: AdaptivePlanSettings | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The split fleet of `plan_result` with the controller against the static threshold."""
    s = settings or AdaptivePlanSettings()
    pools = list(plan_result["split"]["pools"])
    if len(pools) < 2:
        return {"skipped": "the split has one pool: no threshold to move"}
    planned = [int(p["instances"]) for p in pools]
    tps = [int(p["config"]["tensor_parallel_size"]) for p in pools]
    wins = fleet_windows(mix, rate, s.warmup_s + s.measure_s, s.windows, s.seed)
    cache: dict[tuple[bool, tuple[int, ...]], list[_Run]] = {}

    def runs(adaptive: bool, counts: tuple[int, ...]) -> list[_Run]:
        key = (adaptive, counts)
        if key not in cache:
            if progress is not None:
                name = "adaptive" if adaptive else "static"
                progress(f"{name} {'+'.join(str(c) for c in counts)} instances")
            fleet = _fleet_of(model, gpu, pools, counts, step_params)
            cache[key] = [_simulate(fleet, w, s, slo, adaptive) for w in wins]
        return cache[key]

    def meets(adaptive: bool, counts: tuple[int, ...]) -> bool:
        return float(np.mean([math.log(r.ratio) for r in runs(adaptive, counts)])) <= 0.0

    def gpus(counts: Sequence[int]) -> int:
        return sum(c * t for c, t in zip(counts, tps, strict=True))

    def size(adaptive: bool) -> tuple[int, ...]:
        counts = list(planned)
        grow = 0
        while not meets(adaptive, tuple(counts)) and grow < 8:
            counts = [c + max(1, math.ceil(s.step * c)) for c in counts]
            grow += 1
        for i in range(len(counts)):
            step = max(1, round(s.step * counts[i]))
            floor = max(1, round(s.tolerance * counts[i]))
            while True:
                trial = list(counts)
                trial[i] = counts[i] - step
                if trial[i] >= 1 and meets(adaptive, tuple(trial)):
                    counts = trial
                    continue
                if step <= floor:
                    break
                step = max(floor, step // 2)
        return tuple(counts)

    conf = s.confidence
    at = tuple(planned)
    st_runs, ad_runs = runs(False, at), runs(True, at)

    def describe(rs: list[_Run]) -> dict[str, Any]:
        logs = [math.log(r.ratio) for r in rs]
        iv = interval(logs, conf)
        return {
            "slo_ratio": math.exp(iv.mean),
            "slo_ratio_ci": _exp_ci(iv),
            "windows_meeting": sum(1 for r in rs if r.ratio <= 1.0),
            "ttft_p99_s": float(np.mean([r.ttft_p99_s for r in rs])),
            "tpot_p99_s": float(np.mean([r.tpot_p99_s for r in rs])),
            "threshold_mean": float(np.mean([r.threshold_mean for r in rs])),
            "moves": sum(r.moves for r in rs),
        }

    diff = interval(
        [math.log(a.ratio) - math.log(b.ratio) for a, b in zip(ad_runs, st_runs, strict=True)],
        conf,
    )
    sized_static = size(False)
    sized_adaptive = size(True)
    g_static, g_adaptive = gpus(sized_static), gpus(sized_adaptive)
    names = [str(p["pool"]) for p in pools]
    homo = int(plan_result.get("homogeneous", {}).get("gpus", 0))
    return {
        "controller": asdict(s.controller),
        "windows": s.windows,
        "warmup_s": s.warmup_s,
        "measure_s": s.measure_s,
        "simulations": len(cache) * len(wins),
        "at_planned": {
            "instances": dict(zip(names, planned, strict=True)),
            "gpus": gpus(planned),
            "static": describe(st_runs),
            "adaptive": describe(ad_runs),
            # exp(mean log r difference): < 1 means the controller brings the P99s
            # nearer their targets on the same windows.
            "adaptive_over_static_slo_ratio": math.exp(diff.mean),
            "adaptive_over_static_slo_ratio_ci": _exp_ci(diff),
        },
        "sized": {
            "static": {"instances": dict(zip(names, sized_static, strict=True)), "gpus": g_static},
            "adaptive": {
                "instances": dict(zip(names, sized_adaptive, strict=True)),
                "gpus": g_adaptive,
            },
        },
        "gpus_saved_by_controller": g_static - g_adaptive,
        "share_saved_by_controller": (g_static - g_adaptive) / g_static if g_static else 0.0,
        # Points of the plan's saving (1 - split / homogeneous GPUs) that are the
        # controller's: its GPUs saved over the homogeneous fleet's GPUs.
        "saving_points_from_controller": (g_static - g_adaptive) / homo if homo else None,
    }
