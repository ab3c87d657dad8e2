"""The A/B's arms and its prediction: the verified planner sizes, the simulator predicts.

    workload (K x N requests) ─► planner, verified: whole pools simulated on K
        │                        disjoint windows of N requests (common random
        │                        numbers) ─► counts per fleet, the saving [95%]
        ├─ one GPU budget: the smaller planned fleet; both arms fitted to it
        └─ both arms simulated on the N requests the demo replays (the point) and
           on the K - 1 other windows (the 90% prediction interval of a replay)

The prediction is made the way the measurement is: the same requests at the
same arrival times, both arms from empty, the same figures (the share of
requests within both SLOs, P99 TTFT and TPOT over completed requests), the
same balancing (the gateway's picker) and spillover rule as the gateways,
and the same end: a request not finished when the replay's time limit
(`max_time_s` x speedup, modelled) passes is aborted in both.
Its interval is where one replay of N requests of this workload lands: a
t prediction interval over the windows (mean +- t sd sqrt(1 + 1/K)), the
windows disjoint, so independent on a synthetic stream.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dualpool.errors import ConfigError
from dualpool.simulator import FleetConfig, RecordSink
from dualpool.workload import Request

if TYPE_CHECKING:
    from dualpool.compare import CompareSettings

__all__ = [
    "ArmFigures",
    "ArmPlan",
    "PoolPlan",
    "Prediction",
    "plan_arms",
    "predict",
    "windows_of",
]

ARMS = ("homogeneous", "split")
# Figures an arm is judged on, in the prediction and the measurement alike.
METRICS = ("goodput", "ttft_p99_s", "tpot_p99_s")


@dataclass(frozen=True, slots=True)
class PoolPlan:
    name: str
    # max_model_len / max_num_seqs / max_num_batched_tokens
    engine: tuple[int, int, int]
    tp: int
    instances: int
    # share of the workload that reaches this pool, and its rate (req/s)
    share: float
    rate: float
    # the routing threshold (B_short) of a short pool; None: the pool's length
    threshold: int | None = None


@dataclass(frozen=True, slots=True)
class ArmFigures:
    """One arm on one window of N requests (simulated or measured)."""

    # requests that completed with TTFT and TPOT within the SLOs / all requests
    goodput: float
    ttft_p99_s: float
    tpot_p99_s: float
    preemptions: int = 0
    rejected: int = 0
    # requests spilled from a saturated short pool to the long one
    spilled: int = 0

    def get(self, metric: str) -> float:
        return float(getattr(self, metric))


def _prediction_interval(values: Sequence[float], confidence: float) -> tuple[float, float]:
    """Where one more draw lands: mean +- t sd sqrt(1 + 1/n) (n >= 2), else nan."""
    from dualpool.planner import interval

    xs = [x for x in values if math.isfinite(x)]
    if len(xs) < 2 or len(xs) < len(values):
        return math.nan, math.nan
    iv = interval(xs, confidence)
    # interval(): mean +- t sd / sqrt(n); a prediction: t sd sqrt(1 + 1/n).
    half = iv.half_width * math.sqrt(len(xs) + 1)
    return iv.mean - half, iv.mean + half


@dataclass(slots=True)
class Prediction:
    """Both arms simulated on windows of N requests; window 0 is the replayed one."""

    per_window: dict[str, list[ArmFigures]]
    confidence: float = 0.90
    elapsed_s: float = 0.0

    @property
    def windows(self) -> int:
        return len(self.per_window["homogeneous"])

    def point(self, arm: str) -> ArmFigures:
        return self.per_window[arm][0]

    def range(self, arm: str, metric: str) -> tuple[float, float]:
        lo, hi = _prediction_interval(
            [f.get(metric) for f in self.per_window[arm]], self.confidence
        )
        if metric == "goodput":
            return max(0.0, lo), min(1.0, hi)
        return max(0.0, lo), hi

    def diff(self, metric: str) -> float:
        """split - homogeneous on the replayed requests."""
        return self.point("split").get(metric) - self.point("homogeneous").get(metric)

    def diff_range(self, metric: str) -> tuple[float, float]:
        """The paired difference's prediction interval over the windows."""
        d = [
            s.get(metric) - h.get(metric)
            for h, s in zip(self.per_window["homogeneous"], self.per_window["split"], strict=True)
        ]
        return _prediction_interval(d, self.confidence)

    def split_ahead(self) -> bool:
        """The split ahead on the replayed requests: more goodput and a lower P99 TTFT."""
        h, s = self.point("homogeneous"), self.point("split")
        return s.goodput > h.goodput and s.ttft_p99_s < h.ttft_p99_s


@dataclass(slots=True)
class ArmPlan:
    """Both arms for one GPU budget, the verified planner's figures and the prediction."""

    budget_gpus: int
    # instances the verified planner provisions for the SLOs: homogeneous, split short, long
    planned: dict[str, int]
    arms: dict[str, list[PoolPlan]]
    # the planner's saving of the split (fraction of GPUs), its 95% interval, verdict
    saving: float
    saving_ci: tuple[float, float]
    recommendation: str
    alpha: float
    # the planner's windows: how many, of how many requests, and whether they overlapped
    planner_windows: int
    window_requests: int
    overlapping: bool
    planner_s: float = 0.0
    # the planner's fleet P99 TTFT at its own provisioned counts, 95% interval (s)
    planner_ttft_p99: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    prediction: Prediction | None = None

    def gpus(self, arm: str) -> int:
        return sum(p.instances * p.tp for p in self.arms[arm])


def windows_of(spec: str, rate: float, n: int, k: int, first: list[Request]) -> list[list[Request]]:
    """Up to k disjoint windows of n requests of the workload, each from t = 0.

    Window 0 is `first` (the requests replayed); the others are the following
    blocks of a k x n draw of the same workload (fewer when the source is shorter).
    """
    from dualpool.bench import load_workload

    draw = [r for r in load_workload(spec, n * k, rate) if r.tokens_known]
    out = [first]
    for w in range(1, k):
        block = draw[w * n : (w + 1) * n]
        if len(block) < n:
            break
        out.append(_from_zero(block))
    return out


def _from_zero(block: list[Request]) -> list[Request]:
    """The block shifted so that its first request arrives at t = 0 (as the bench sends)."""
    t0 = block[0].arrival_s
    return [r.at(r.arrival_s - t0) for r in block] if t0 else block


def plan_arms(
    settings: CompareSettings,
    requests: list[Request],
    *,
    windows: int = 8,
    predict_arms: bool = True,
    say: Callable[[str], None] | None = None,
    processes: int | None = None,
) -> ArmPlan:
    """Size both fleets with the verified planner, fit them to one budget, predict.

    The planner reads `windows` disjoint
    windows of len(requests) requests each (the windows `predict` simulates),
    its jobs on `processes` local processes (default: one per core).
    """
    from dualpool.engine import get_gpu, get_model
    from dualpool.planner import (
        PlanSettings,
        VerifySettings,
        build_jobs,
        mix_from_requests,
        plan,
    )

    t0 = time.perf_counter()
    n = len(requests)
    if say is not None:
        say("planning: whole pools simulated on disjoint windows (verified planner)")
    wins = windows_of(settings.workload, settings.rate, n, windows, requests)
    source = _one_stream(wins)
    k = len(wins)
    disjoint = k >= 2
    verify = VerifySettings(
        seed=settings.seed,
        precision=0.05,
        min_windows=min(4, k) if disjoint else 4,
        max_windows=k if disjoint else 8,
        block=n if disjoint else None,
        min_measured=n if disjoint else 2000,
        measure_s=1e-3 if disjoint else 10.0,
    )
    s = PlanSettings(
        model=get_model(settings.model),
        gpu=get_gpu(settings.gpu),
        rate=settings.rate,
        ttft_slo_s=settings.ttft_slo_s,
        tpot_slo_s=settings.tpot_slo_s,
        b_short=settings.b_short,
        simulate=True,
        calibrate=False,
        three_pool=None,
        sweep_budgets=(settings.b_short,),
        verify=verify,
    )
    mix = mix_from_requests(source, settings.workload)
    p = plan(s, mix, runner=_runner(processes))
    jobs = {j.key: j for j in build_jobs(s, mix) if j.key in ("homogeneous", "short", "long")}
    pools = {x["pool"]: x for f in ("homogeneous", "split") for x in p[f]["pools"]}
    n_h = int(p["homogeneous"]["instances"]["homogeneous"])
    n_s = int(p["split"]["instances"].get("short", 0))
    n_l = int(p["split"]["instances"].get("long", 0))
    tp = {key: j.design.tp for key, j in jobs.items()}
    budget = min(n_h * tp["homogeneous"], n_s * tp["short"] + n_l * tp["long"])
    # The homogeneous arm: as many long instances as the budget holds.
    h = max(1, budget // tp["homogeneous"])
    # The split arm: the planner's long count first (at least one, and at most
    # what leaves one short instance), the rest short.
    long_n = max(1, min(n_l, (budget - tp["short"]) // tp["long"]))
    short_n = max(1, (budget - long_n * tp["long"]) // tp["short"])

    def pool(key: str, count: int) -> PoolPlan:
        j = jobs[key]
        e = j.design.engine
        share = float(pools[key]["share"]) if key in pools else 0.0
        return PoolPlan(
            key,
            (e.max_model_len, e.max_num_seqs, e.max_num_batched_tokens),
            j.design.tp,
            count,
            share,
            settings.rate * share,
            settings.b_short if key == "short" else None,
        )

    info = p.get("verification") or {}
    ci = p.get("saving_ci") or {}
    planner_p99: dict[str, tuple[float, float, float]] = {}
    for f in ("homogeneous", "split"):
        c = p[f].get("ttft_p99_ci")
        if c:
            planner_p99[f] = (float(c["mean"]), float(c["low"]), float(c["high"]))
    arm_plan = ArmPlan(
        budget_gpus=budget,
        planned={"homogeneous": n_h, "short": n_s, "long": n_l},
        arms={
            "homogeneous": [pool("homogeneous", h)],
            "split": [pool("short", short_n), pool("long", long_n)],
        },
        saving=float(p["saving"]),
        saving_ci=(float(ci.get("low", math.nan)), float(ci.get("high", math.nan))),
        recommendation=str(p["recommendation"]),
        alpha=float(p["alpha"]),
        planner_windows=int(info.get("windows", 0)),
        window_requests=int(info.get("block_requests", n)),
        overlapping=bool(info.get("overlapping", True)),
        planner_s=time.perf_counter() - t0,
        planner_ttft_p99=planner_p99,
    )
    if predict_arms:
        if say is not None:
            say("predicting both arms on the replayed requests (simulator)")
        arm_plan.prediction = predict(settings, arm_plan, wins)
    return arm_plan


def _runner(processes: int | None) -> Callable[[Sequence[Any]], list[Any]]:
    """The planner's jobs on `processes` local processes (None: one per core), in order."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    from dualpool.planner import execute

    def run(jobs: Sequence[Any]) -> list[Any]:
        n = min(processes or os.cpu_count() or 1, len(jobs))
        if n <= 1:
            return [execute(j) for j in jobs]
        with ProcessPoolExecutor(max_workers=n) as ex:
            return list(ex.map(execute, jobs))

    return run


def _one_stream(wins: list[list[Request]]) -> list[Request]:
    """The windows end to end, one mean gap apart (the planner's input)."""
    out: list[Request] = []
    off = 0.0
    for w in wins:
        span = w[-1].arrival_s - w[0].arrival_s
        out += [r.at(r.arrival_s - w[0].arrival_s + off) for r in w]
        off += span + span / max(1, len(w) - 1)
    return out


def _fleet(settings: CompareSettings, pools: list[PoolPlan]) -> FleetConfig:
    from dualpool.engine import EngineConfig, StepTimeParams, get_gpu, get_model
    from dualpool.simulator import PoolConfig

    cfgs = []
    for p in pools:
        length, seqs, batch = p.engine
        e = EngineConfig(
            max_model_len=length,
            max_num_seqs=seqs,
            max_num_batched_tokens=batch,
            tensor_parallel_size=p.tp,
        )
        cfgs.append(PoolConfig(p.name, e, p.instances, p.threshold))
    return FleetConfig(
        get_model(settings.model), get_gpu(settings.gpu), tuple(cfgs), StepTimeParams()
    )


class _Rows(RecordSink):
    """A record sink keeping (ttft, tpot, preemptions, rejected) per request.

    A request not finished by `cut_s` (arrival + E2E, modelled seconds from the
    first arrival) has no latencies: the replay stops there and aborts it."""

    def __init__(self, cut_s: float) -> None:
        self.rows: list[tuple[float | None, float | None, int, int, int]] = []
        self.cut_s = cut_s

    def write(self, row: tuple[Any, ...]) -> None:
        ttft, tpot, e2e = row[6], row[7], row[8]
        if e2e is None or row[0] + e2e > self.cut_s:
            ttft = tpot = None
        self.rows.append((ttft, tpot, int(row[9]), int(row[10]), int(row[12])))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def figures(
    ttft: Sequence[float | None],
    tpot: Sequence[float | None],
    ttft_slo: float,
    tpot_slo: float,
    preemptions: int = 0,
    rejected: int = 0,
    spilled: int = 0,
) -> ArmFigures:
    """An arm's figures from per-request TTFT and TPOT (None: not completed)."""
    n = len(ttft)
    done = [(a, b) for a, b in zip(ttft, tpot, strict=True) if a is not None and b is not None]
    good = sum(1 for a, b in done if a <= ttft_slo and b <= tpot_slo)
    if done:
        t = np.asarray([a for a, _ in done])
        p = np.asarray([b for _, b in done])
        t99, p99 = float(np.percentile(t, 99)), float(np.percentile(p, 99))
    else:
        t99 = p99 = math.inf
    return ArmFigures(good / n if n else 0.0, t99, p99, preemptions, rejected, spilled)


def simulate_arm(
    settings: CompareSettings, pools: list[PoolPlan], requests: list[Request]
) -> ArmFigures:
    """One arm on `requests` from empty, balanced and spilled as its gateway does,
    stopped where the replay stops (`max_time_s`)."""
    from dualpool.simulator import SLO, SimOptions, simulate

    opts = SimOptions(
        balancer="gw",
        spillover=len(pools) > 1,
        # the gateway's backpressure defaults: waiting > 16 or KV > 97% per backend
        saturation_waiting=16.0,
        saturation_kv=0.97,
        seed=settings.seed,
        slo=SLO(ttft_s=settings.ttft_slo_s, tpot_s=settings.tpot_slo_s),
    )
    # The replay's hard limit in modelled seconds (wall limit x speedup).
    rows = _Rows(settings.max_time_s * settings.speedup)
    simulate(_fleet(settings, pools), requests, opts, records=rows)
    return figures(
        [r[0] for r in rows.rows],
        [r[1] for r in rows.rows],
        settings.ttft_slo_s,
        settings.tpot_slo_s,
        sum(r[2] for r in rows.rows),
        sum(r[3] for r in rows.rows),
        sum(r[4] for r in rows.rows),
    )


def predict(settings: CompareSettings, plan: ArmPlan, wins: list[list[Request]]) -> Prediction:
    """Both arms on every window (window 0: the replayed requests)."""
    if not wins or not wins[0]:
        raise ConfigError("workload", "no requests to predict")
    t0 = time.perf_counter()
    per = {arm: [simulate_arm(settings, plan.arms[arm], w) for w in wins] for arm in ARMS}
    return Prediction(per, elapsed_s=time.perf_counter() - t0)
