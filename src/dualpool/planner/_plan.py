"""`plan`: size a homogeneous fleet and a dual-pool split for one workload.

    workload ─► Mix (prompt, output, budget per request; alpha per B_short)
        │
        ├─ homogeneous pool (long config, all traffic) ─┐
        ├─ split: short pool (budget <= B_short)        ├─ one PoolJob each, run in
        │         long pool (the rest)                  │  parallel (processes or Ray):
        ├─ sweep: the split at B_short 2K .. 32K        │  engine profile → closed form,
        └─ three pools (8K / 32K / 64K)                 ┘  discrete form, SLO-aware size
        ─► [verification: rounds of WindowJobs, whole pools on windows of the
            workload, common random numbers, until the saving's 95% interval
            is within the precision; provisioned counts; final round (`_replicate`)]
        ─► costs (GPUs x price x 8,760 h), saving +- half-width, recommendation

Every job is a pure function of picklable inputs (`PoolJob`, `WindowJob`),
so the same lists run on a local process pool or on Ray with identical results.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from dualpool.engine import (
    EngineConfig,
    GPUSpec,
    ModelSpec,
    StepTimeModel,
    StepTimeParams,
    smallest_feasible_tp,
)
from dualpool.errors import ConfigError, InfeasibleConfigError, WorkloadError
from dualpool.planner._calibrate import CalibrationSettings, calibrated_pool_size
from dualpool.planner._capacity import (
    AnalyticSize,
    InstanceProfile,
    PoolDesign,
    analytic_pool_size,
    load_point,
    profile_instance,
)
from dualpool.planner._queueing import (
    closed_form_saving,
    closed_form_saving_gpus,
    pool_instances,
    recommend_split,
)
from dualpool.planner._replicate import (
    Comparison,
    PoolVerified,
    replicate,
    summarize,
    whole_passes,
    window_plan,
)
from dualpool.planner._stats import Interval, interval, one_sided_confidence
from dualpool.planner._verify import PoolSim, VerifySettings
from dualpool.planner._windows import WindowJob, WindowOutcome, WindowPlan, run_window
from dualpool.workload import Request, RequestColumns

__all__ = [
    "DEFAULT_LONG",
    "DEFAULT_SHORT",
    "HOURS_PER_YEAR",
    "Mix",
    "PlanSettings",
    "PoolJob",
    "PoolOutcome",
    "build_jobs",
    "execute",
    "mix_from_requests",
    "plan",
    "run_job",
    "run_serial",
    "unchecked_gpu",
]

HOURS_PER_YEAR = 8760.0
SWEEP_BUDGETS: tuple[int, ...] = (2048, 4096, 8192, 16384, 32768)

# The paper's pool configs; TP is filled in (smallest feasible) by the planner.
DEFAULT_SHORT = EngineConfig(max_model_len=8192, max_num_seqs=128, max_num_batched_tokens=16384)
DEFAULT_LONG = EngineConfig(max_model_len=65536, max_num_seqs=16, max_num_batched_tokens=8192)
# The middle pool of the three-pool variant.
DEFAULT_MID = EngineConfig(max_model_len=32768, max_num_seqs=32, max_num_batched_tokens=8192)


@dataclass(frozen=True, slots=True)
class Mix:
    """The workload as arrays: what the planner needs of each request."""

    arrival_s: npt.NDArray[np.float64]
    prompt: npt.NDArray[np.int64]
    output: npt.NDArray[np.int64]
    # prompt + declared output (max_tokens when present, else the true output):
    # what a router compares with B_short.
    budget: npt.NDArray[np.int64]
    # Mean arrival rate of the source (req/s).
    source_rate: float
    description: str = ""

    def __len__(self) -> int:
        return int(self.prompt.size)

    def alpha(self, b: int) -> float:
        return float(np.count_nonzero(self.budget <= b) / max(1, len(self)))

    def requests(self, mask: npt.NDArray[np.bool_]) -> list[Request]:
        """The selected requests, in arrival order (for the simulator)."""
        idx = np.flatnonzero(mask)
        return [
            Request(float(a), int(p), int(o), None)
            for a, p, o in zip(
                self.arrival_s[idx].tolist(),
                self.prompt[idx].tolist(),
                self.output[idx].tolist(),
                strict=True,
            )
        ]


def mix_from_requests(requests: Sequence[Request] | RequestColumns, description: str = "") -> Mix:
    """Build a Mix; requests without true token counts are dropped."""
    cols = (
        requests if isinstance(requests, RequestColumns) else RequestColumns.from_requests(requests)
    )
    known = (cols.prompt_tokens >= 0) & (cols.output_tokens >= 0)
    arr = cols.arrival_s[known]
    prompt = np.maximum(cols.prompt_tokens[known], 1)
    output = np.maximum(cols.output_tokens[known], 1)
    declared = np.where(cols.max_tokens[known] >= 0, cols.max_tokens[known], output)
    if prompt.size < 2:
        raise WorkloadError(
            f"the workload has {prompt.size} request(s) with known token counts; need at least 2"
        )
    span = float(arr[-1] - arr[0])
    if span <= 0:
        raise WorkloadError("the workload's arrivals span no time; cannot tell its rate")
    return Mix(arr, prompt, output, prompt + declared, (prompt.size - 1) / span, description)


@dataclass(frozen=True, slots=True)
class PlanSettings:
    """Everything `plan` needs besides the workload."""

    model: ModelSpec
    gpu: GPUSpec
    # Fleet arrival rate, req/s.
    rate: float
    ttft_slo_s: float = 2.0
    tpot_slo_s: float = 0.080
    # Utilization cap of the discrete form.
    utilization: float = 0.9
    # $/GPU-hour; None: the catalog's price for the GPU.
    price_per_hour: float | None = None
    b_short: int = 8192
    short: EngineConfig | None = None
    long: EngineConfig | None = None
    # False: skip vLLM's memory check (the paper's TP-2 setting); KV is then
    # sized as the config assumes (see build_scheduler / unchecked_gpu).
    check_memory: bool = True
    step_params: StepTimeParams | None = None
    # Run the simulation search (needs dualpool.simulator); else analytic only.
    simulate: bool = True
    # Also verify every sweep point by simulation (slow).
    simulate_sweep: bool = False
    # The SLO-aware estimate from the simulated load curve (`_calibrate`);
    # False: the closed-form queueing model only.
    calibrate: bool = True
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    verify: VerifySettings = field(default_factory=VerifySettings)
    sweep_budgets: tuple[int, ...] = SWEEP_BUDGETS
    three_pool: tuple[int, int, int] | None = (8192, 32768, 65536)
    # A split must save more than this fraction to be recommended.
    min_saving: float = 0.0

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ConfigError("--rate", f"must be a positive number of req/s, got {self.rate!r}")
        if not 0.0 < self.utilization <= 1.0:
            raise ConfigError("--utilization", f"must be in (0, 1], got {self.utilization!r}")
        for name in ("ttft_slo_s", "tpot_slo_s"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ConfigError(f"--{name[:4]}-slo", f"must be a positive number, got {v!r}")
        if self.price_per_hour is not None and not self.price_per_hour > 0:
            raise ConfigError("--price", f"must be > 0 $/GPU-hour, got {self.price_per_hour!r}")

    @property
    def price(self) -> float:
        return self.gpu.price_per_hour if self.price_per_hour is None else self.price_per_hour


def unchecked_gpu(model: ModelSpec, gpu: GPUSpec, engines: Sequence[EngineConfig]) -> GPUSpec:
    """`gpu` with enough memory that every engine holds max_num_seqs full sequences.

    The paper's setting with vLLM's memory check off: timing (FLOP/s, HBM
    bandwidth, links) is the real GPU's; only the memory is what the configs
    assume. Used for both the engine profile and the simulator.
    """
    from dualpool.engine import plan_memory

    need = 0
    for e in engines:
        p = plan_memory(model, gpu, e, check=False)
        seq_blocks = -(-e.max_model_len // e.block_size)
        kv = e.max_num_seqs * seq_blocks * e.block_size * p.kv_bytes_per_token
        total = p.weight_bytes + p.activation_bytes + p.overhead_bytes + kv
        need = max(need, math.ceil(total / e.gpu_memory_utilization) + (1 << 30))
    if need <= gpu.memory_bytes:
        return gpu
    return replace(gpu, name=f"{gpu.name} (memory check off)", memory_bytes=need)


def with_smallest_tp(model: ModelSpec, gpu: GPUSpec, engine: EngineConfig) -> EngineConfig:
    try:
        tp = smallest_feasible_tp(model, gpu, engine)
    except InfeasibleConfigError as e:
        raise ConfigError("pool config", str(e)) from None
    return replace(engine, tensor_parallel_size=tp)


@dataclass(frozen=True, slots=True)
class PoolJob:
    """One pool to size: picklable, so it runs in any process or Ray worker."""

    key: str
    design: PoolDesign
    model: ModelSpec
    gpu: GPUSpec
    mix: Mix
    # Budgets in (lo, hi] reach this pool.
    lo: int
    hi: int
    # The pool's arrival rate, req/s.
    rate: float
    ttft_slo_s: float
    tpot_slo_s: float
    utilization: float
    step_params: StepTimeParams | None
    simulate: bool
    verify: VerifySettings
    check_memory: bool
    calibrate: bool = False
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)


@dataclass(frozen=True, slots=True)
class PoolOutcome:
    """A sized pool: engine profile, analytic sizes and (after verification) the windows."""

    key: str
    design: PoolDesign
    share: float
    rate: float
    profile: InstanceProfile | None
    analytic: AnalyticSize | None
    verified: PoolVerified | None = None
    error: str | None = None
    confidence: float = 0.95

    @property
    def instances(self) -> int:
        """The provisioned count when verified, else the analytic one."""
        if self.verified is not None:
            return self.verified.instances
        return self.analytic.instances if self.analytic else 0

    @property
    def chosen(self) -> PoolSim | None:
        return self.verified.chosen if self.verified is not None else None

    @property
    def gpus(self) -> int:
        return self.instances * self.design.tp

    def as_dict(self) -> dict[str, Any]:
        pr = self.profile
        an = self.analytic
        out: dict[str, Any] = {
            "pool": self.design.name,
            "config": {
                "max_model_len": self.design.engine.max_model_len,
                "max_num_seqs": self.design.engine.max_num_seqs,
                "max_num_batched_tokens": self.design.engine.max_num_batched_tokens,
                "tensor_parallel_size": self.design.tp,
                "threshold": self.design.budget,
            },
            "share": self.share,
            "rate": self.rate,
            "error": self.error,
        }
        if pr is not None:
            out["engine"] = {
                "mu": pr.mu,
                "mu_per_gpu": pr.mu / pr.tp,
                "slots": pr.slots,
                "service_s": pr.service_s,
                "tpot_p99_saturated_s": pr.tpot_p99_s,
                "preemptions_per_1k_saturated": pr.preemptions_per_1k,
                "mean_prompt": pr.mean_prompt,
                "mean_output": pr.mean_output,
                "sample": pr.sample,
                "distinct": pr.distinct,
            }
        if an is not None:
            pt = an.point
            out["analytic"] = {
                "discrete": an.discrete,
                "queueing": an.instances,
                "method": an.method,
                "queueing_mgc": an.instances if an.mgc_instances is None else an.mgc_instances,
                "max_rate_per_instance": an.max_rate_per_instance,
                "binding": an.binding,
                "slo_attainable": an.attainable,
                "idle_ttft_p99_s": an.idle_ttft_s,
                "idle_tpot_p99_s": an.idle_tpot_s,
                "ttft_p99_s": _finite(pt.ttft_p99_s) if pt else None,
                "tpot_p99_s": _finite(pt.tpot_p99_s) if pt else None,
                "occupancy": pt.occupancy if pt else None,
            }
        v = self.verified
        out["simulation"] = v.as_dict(self.confidence) if v else None
        out["instances"] = self.instances
        out["gpus"] = self.gpus
        return out


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def run_job(job: PoolJob) -> PoolOutcome:
    """Profile, size analytically (closed form, then the calibrated load curve).

    The verification by simulation runs afterwards, on windows (`_replicate`).
    """
    mix = job.mix
    mask = (mix.budget > job.lo) & (mix.budget <= job.hi)
    share = float(np.count_nonzero(mask) / max(1, len(mix)))
    if share == 0:
        return PoolOutcome(job.key, job.design, 0.0, 0.0, None, None)
    gpu = job.gpu
    try:
        profile = profile_instance(
            job.model,
            gpu,
            job.design,
            mix.prompt[mask],
            mix.output[mask],
            step_params=job.step_params,
            check=job.check_memory,
        )
    except (InfeasibleConfigError, ConfigError) as e:
        return PoolOutcome(job.key, job.design, share, job.rate, None, None, None, str(e))
    timing = StepTimeModel(job.model, gpu, job.design.engine, job.step_params)
    analytic = analytic_pool_size(
        profile,
        timing,
        job.rate,
        ttft_s=job.ttft_slo_s,
        tpot_s=job.tpot_slo_s,
        utilization=job.utilization,
    )
    base = mix.requests(mask) if job.calibrate else []
    base_rate = mix.source_rate * share
    if len(base) >= 2 and base[-1].arrival_s > base[0].arrival_s:
        base_rate = (len(base) - 1) / (base[-1].arrival_s - base[0].arrival_s)
    if job.calibrate and analytic.attainable:
        cal = calibrated_pool_size(
            job.model,
            gpu,
            job.design,
            base,
            base_rate,
            job.rate,
            profile.mu,
            ttft_slo=job.ttft_slo_s,
            tpot_slo=job.tpot_slo_s,
            utilization=job.utilization,
            settings=job.calibration,
            step_params=job.step_params,
            default_requests=job.verify.requests,
        )
        analytic = replace(
            analytic,
            instances=cal.instances,
            binding=cal.binding,
            attainable=cal.attainable,
            point=load_point(profile, timing, job.rate / cal.instances),
            method="calibrated",
            mgc_instances=analytic.instances,
            max_rate_per_instance=cal.rate,
        )
    return PoolOutcome(job.key, job.design, share, job.rate, profile, analytic)


def execute(job: PoolJob | WindowJob) -> PoolOutcome | WindowOutcome:
    """Run any plan job (what the runners map over jobs)."""
    if isinstance(job, WindowJob):
        return run_window(job)
    return run_job(job)


Runner = Callable[[Sequence[Any]], list[Any]]


def run_serial(jobs: Sequence[Any]) -> list[Any]:
    """Every job in this process, in order (`execute` on each)."""
    return [execute(j) for j in jobs]


def _job(
    s: PlanSettings, mix: Mix, key: str, design: PoolDesign, lo: int, hi: int, sim: bool
) -> PoolJob:
    share = float(np.count_nonzero((mix.budget > lo) & (mix.budget <= hi)) / max(1, len(mix)))
    gpu = s.gpu
    return PoolJob(
        key=key,
        design=design,
        model=s.model,
        gpu=gpu,
        mix=mix,
        lo=lo,
        hi=hi,
        rate=s.rate * share,
        ttft_slo_s=s.ttft_slo_s,
        tpot_slo_s=s.tpot_slo_s,
        utilization=s.utilization,
        step_params=s.step_params,
        simulate=sim,
        verify=s.verify,
        check_memory=s.check_memory,
        calibrate=s.calibrate,
        calibration=s.calibration,
    )


def _engines(s: PlanSettings) -> tuple[EngineConfig, EngineConfig]:
    short = s.short or DEFAULT_SHORT
    long = s.long or DEFAULT_LONG
    if s.b_short > short.max_model_len:
        short = replace(short, max_model_len=s.b_short)
    return short, long


def _fit(s: PlanSettings, engine: EngineConfig, explicit: bool) -> EngineConfig:
    """Keep an explicit TP; otherwise the smallest that fits (memory check on)."""
    if explicit or not s.check_memory:
        return engine
    return with_smallest_tp(s.model, s.gpu, engine)


def build_jobs(s: PlanSettings, mix: Mix) -> list[PoolJob]:
    """Every pool the plan sizes: homogeneous, split, sweep points, three pools."""
    short0, long0 = _engines(s)
    explicit_short = s.short is not None and s.short.tensor_parallel_size > 1
    explicit_long = s.long is not None and s.long.tensor_parallel_size > 1
    short = _fit(s, short0, explicit_short)
    long = _fit(s, long0, explicit_long)
    if short.max_model_len >= long.max_model_len:
        raise ConfigError(
            "--short",
            f"the short pool's max_model_len ({short.max_model_len}) must be below the long "
            f"pool's ({long.max_model_len})",
        )
    if not 1 <= s.b_short <= short.max_model_len:
        raise ConfigError("--b-short", f"must be in [1, short max_model_len={short.max_model_len}]")
    top = long.max_model_len
    jobs = [
        _job(s, mix, "homogeneous", PoolDesign("homogeneous", long), 0, top, s.simulate),
        _job(s, mix, "short", PoolDesign("short", short, s.b_short), 0, s.b_short, s.simulate),
        _job(s, mix, "long", PoolDesign("long", long), s.b_short, top, s.simulate),
    ]
    for b in s.sweep_budgets:
        if b >= top or (b == s.b_short and short.max_model_len == s.b_short):
            continue
        e = _fit(s, replace(short0, max_model_len=b), False)
        sim = s.simulate and s.simulate_sweep
        jobs.append(_job(s, mix, f"sweep:{b}:short", PoolDesign("short", e, b), 0, b, sim))
        jobs.append(_job(s, mix, f"sweep:{b}:long", PoolDesign("long", long), b, top, sim))
    if s.three_pool is not None:
        b1, b2, b3 = s.three_pool
        if b1 < b2 < b3 and b3 <= top:
            sim = s.simulate and s.simulate_sweep
            e1 = _fit(s, replace(short0, max_model_len=b1), False)
            e2 = _fit(
                s,
                DEFAULT_MID
                if b2 == DEFAULT_MID.max_model_len
                else replace(DEFAULT_MID, max_model_len=b2),
                False,
            )
            e3 = _fit(s, replace(long, max_model_len=b3), explicit_long)
            jobs += [
                _job(s, mix, "three:short", PoolDesign("short", e1, b1), 0, b1, sim),
                _job(s, mix, "three:mid", PoolDesign("mid", e2, b2), b1, b2, sim),
                _job(s, mix, "three:long", PoolDesign("long", e3), b2, b3, sim),
            ]
    return jobs


def _cost(gpus: int, price: float) -> dict[str, Any]:
    return {
        "gpus": gpus,
        "gpu_hours_per_day": gpus * 24.0,
        "usd_per_year": gpus * price * HOURS_PER_YEAR,
    }


def _split_summary(
    s: PlanSettings, homo: PoolOutcome, parts: Sequence[PoolOutcome], b_short: int
) -> dict[str, Any]:
    price = s.price
    homo_gpus = homo.gpus
    gpus = sum(p.gpus for p in parts)
    an_gpus = sum((p.analytic.instances if p.analytic else 0) * p.design.tp for p in parts)
    homo_an = (homo.analytic.instances if homo.analytic else 0) * homo.design.tp
    return {
        "b_short": b_short,
        "pools": [p.design.name for p in parts],
        "gpus": gpus,
        "saving": 1.0 - gpus / homo_gpus if homo_gpus else 0.0,
        "analytic_gpus": an_gpus,
        "analytic_saving": 1.0 - an_gpus / homo_an if homo_an else 0.0,
        "usd_per_year": gpus * price * HOURS_PER_YEAR,
        "errors": [p.error for p in parts if p.error],
    }


def _pool_run(s: PlanSettings, mix: Mix, job: PoolJob, wp: WindowPlan) -> WindowPlan:
    """The pool's own run length on the shared windows.

    Warm-up: the occupancy-weighted mean time a request spends in an
    instance, E[D^2] / E[D] with D = output x TPOT_SLO / 2 + prompt / 5,000
    tok/s (5 to 120 s): how long the pool takes to fill. Measured: the
    plan's seconds, longer for a pool of little traffic so that it sees at
    least `min_pool_measured` requests (at most 30 minutes).
    """
    v = s.verify
    mask = (mix.budget > job.lo) & (mix.budget <= job.hi)
    share = float(mask.mean())
    if v.warmup_s is not None:
        warm = v.warmup_s
    else:
        d = mix.output[mask] * (s.tpot_slo_s / 2.0) + mix.prompt[mask] / 5000.0
        warm = float(np.clip((d * d).sum() / max(d.sum(), 1e-9), 5.0, 120.0)) if d.size else 5.0
    measured = wp.run_requests / s.rate - wp.warmup_s
    if share > 0:
        longer = min(1800.0, v.min_pool_measured / (s.rate * share))
        if longer > measured:
            measured = longer
            if wp.block >= wp.n:
                # Whole passes of the input (`whole_passes`).
                measured = whole_passes(math.ceil(measured * s.rate), wp.block, up=True) / s.rate
    run = min(_MAX_RUN, math.ceil(s.rate * (warm + measured)))
    return replace(wp, run_requests=max(run, 1), warmup_s=warm)


# Fleet arrivals generated for one pool's run, at most (a pool of little
# traffic takes its requests out of them).
_MAX_RUN = 4_000_000


def _verify(
    s: PlanSettings,
    mix: Mix,
    jobs: Mapping[str, PoolJob],
    by: dict[str, PoolOutcome],
    runner: Runner,
    on_round: Callable[[int, Interval], None] | None,
) -> dict[str, Any]:
    """Whole pools on windows until the saving is known to `precision` (`_replicate`)."""
    v = s.verify
    ttft, tpot = s.ttft_slo_s, s.tpot_slo_s
    main = [k for k in ("homogeneous", "short", "long") if by[k].share > 0]
    sweep: dict[int, list[str]] = {}
    if s.simulate_sweep:
        for b in s.sweep_budgets:
            ks = [f"sweep:{b}:short", f"sweep:{b}:long"]
            if b != s.b_short and all(k in by for k in ks):
                ks = [k for k in ks if by[k].share > 0 and by[k].error is None]
                if ks:
                    sweep[b] = ks
    keys = main + [k for ks in sweep.values() for k in ks]
    fixed: dict[str, int | None] = {}
    starts: dict[str, int] = {}
    for k in keys:
        an = by[k].analytic
        assert an is not None
        fixed[k] = None if an.attainable else an.instances
        starts[k] = an.instances
    wp = window_plan(
        len(mix),
        s.rate,
        seed=v.seed,
        warmup_s=0.0,
        measure_s=v.measure_s,
        min_measured=v.min_measured,
        block=v.block,
    )

    runs = {k: _pool_run(s, mix, jobs[k], wp) for k in keys}

    def make(key: str, win: int, at: int | None, start: int, step: float, keep: bool) -> WindowJob:
        j = jobs[key]
        return WindowJob(
            key=key,
            design=j.design,
            model=j.model,
            gpu=j.gpu,
            arrival_s=mix.arrival_s,
            prompt=mix.prompt,
            output=mix.output,
            budget=mix.budget,
            source_rate=mix.source_rate,
            lo=j.lo,
            hi=j.hi,
            window=win,
            plan=runs[key],
            start=start,
            ttft_slo_s=ttft,
            tpot_slo_s=tpot,
            step_params=s.step_params,
            seed=v.seed,
            evaluate_at=at,
            keep_samples=keep,
            tolerance=v.tolerance,
            step=step,
            prefix=v.prefix,
        )

    tp = {k: by[k].design.tp for k in keys}
    split_keys = tuple((k, tp[k]) for k in main if k != "homogeneous")
    cmp_main = Comparison("split", (("homogeneous", tp["homogeneous"]),), split_keys)
    rep = replicate(
        keys,
        fixed,
        starts,
        make,
        runner,
        cmp_main,
        precision=v.precision,
        confidence=v.confidence,
        min_windows=v.min_windows,
        max_windows=v.window_cap,
        batch=v.batch,
        on_round=on_round,
        ttft_slo=ttft,
        tpot_slo=tpot,
        probe_band=v.probe_band,
    )
    outs, prov, final = rep.outs, rep.instances, rep.final
    n = len(outs["homogeneous"])
    for k in main:
        pv = summarize(
            k,
            outs[k],
            final[k],
            prov[k],
            ttft,
            tpot,
            v.confidence,
            fixed[k] is None,
            superseded=rep.rerun.get(k, 0),
        )
        by[k] = replace(by[k], verified=pv, confidence=v.confidence)
    cross = {k: [o.crossing for o in vs] for k, vs in outs.items()}
    savings = cmp_main.savings(cross, n)
    sweep_ci: dict[int, list[float]] = {}
    for b, ks in sweep.items():
        c = Comparison(
            f"sweep:{b}", (("homogeneous", tp["homogeneous"]),), tuple((k, tp[k]) for k in ks)
        )
        sweep_ci[b] = c.savings(cross, n)
    # Fleet P99s per window at the provisioned counts: the split fleet's
    # requests are the homogeneous fleet's (common random numbers), so its
    # distribution is its pools' samples together.
    fleet_p99: dict[str, dict[str, list[float]]] = {}
    split_names = [k for k in main if k != "homogeneous"]
    for name, ks in (("homogeneous", ["homogeneous"]), ("split", split_names)):
        per: dict[str, list[float]] = {"ttft": [], "tpot": []}
        for w in range(n):
            sims = [(by[k].share, final[k][w].trials[0]) for k in ks]
            # Each pool's samples weighted by its share of the traffic (a pool
            # of little traffic runs longer than the others to be measured).
            sims = [(sh, x) for sh, x in sims if x.ttft]
            for metric in ("ttft", "tpot"):
                parts = [(sh, getattr(x, metric)) for sh, x in sims]
                q = _mixture_p99(parts, []) if parts else None
                per[metric].append(q if q is not None else 0.0)
        fleet_p99[name] = per
    sv = interval(savings, v.confidence)
    return {
        "savings": savings,
        "saving": sv,
        "sweep": {b: interval(x, v.confidence) for b, x in sweep_ci.items()},
        "fleet_p99": fleet_p99,
        "needed_gpus": {
            "homogeneous": [cmp_main.gpus(cross, w)[0] for w in range(n)],
            "split": [cmp_main.gpus(cross, w)[1] for w in range(n)],
        },
        "info": {
            **wp.as_dict(),
            "pools": {
                k: {"warmup_s": r.warmup_s, "run_requests": r.run_requests} for k, r in runs.items()
            },
            "windows": n,
            "offsets": [wp.offset(w) for w in range(n)],
            "overlapping": n > wp.disjoint,
            "precision": v.precision,
            "confidence": v.confidence,
            "converged": sv.half_width <= v.precision,
            "seed": v.seed,
            "simulations": rep.simulations,
            # Pools whose count moved after the last window: final round run again.
            "final_rerun": list(rep.rerun),
            "per_window_saving": savings,
        },
    }


def _rate_curve(
    s: PlanSettings, homo: PoolOutcome, parts: Sequence[PoolOutcome]
) -> list[dict[str, Any]]:
    """The analytic saving at other rates: each pool's per-instance load held.

    A pool's largest per-instance load meeting the SLOs (the calibrated load
    curve's x*, else lambda_pool / G) does not depend on the fleet's rate, so
    G(lambda') = max(discrete form, ceil(lambda' share / x*)). Small pools
    (a few instances) pool less and need somewhat more than this.
    """

    def count(o: PoolOutcome, rate: float) -> int:
        an, pr = o.analytic, o.profile
        if an is None or pr is None or o.share == 0:
            return 0
        lam = rate * o.share
        g = pool_instances(lam, pr.mu, s.utilization)
        if not an.attainable:
            return g
        x = an.max_rate_per_instance or (o.rate / an.instances if an.instances else pr.mu)
        return max(g, math.ceil(lam / x - 1e-9))

    out = []
    for f in (0.1, 0.3, 1.0, 3.0, 10.0):
        r = s.rate * f
        h = count(homo, r) * homo.design.tp
        sp = sum(count(p, r) * p.design.tp for p in parts)
        out.append(
            {
                "rate": r,
                "homogeneous_gpus": h,
                "split_gpus": sp,
                "analytic_saving": 1.0 - sp / h if h else 0.0,
            }
        )
    return out


def plan(
    settings: PlanSettings,
    mix: Mix,
    runner: Runner = run_serial,
    on_round: Callable[[int, Interval], None] | None = None,
) -> dict[str, Any]:
    """The whole plan as one JSON-friendly dict (see docs/planner.md).

    `on_round(windows, saving interval)` is called after each round of the
    verification (progress).
    """
    s = settings
    if s.check_memory is False:
        short0, long0 = _engines(s)
        s = replace(s, gpu=unchecked_gpu(s.model, s.gpu, [short0, long0]))
    jobs = build_jobs(s, mix)
    outcomes = runner(jobs)
    by: dict[str, PoolOutcome] = {o.key: o for o in outcomes}
    homo, short, long = by["homogeneous"], by["short"], by["long"]
    for o in (homo, short, long):
        if o.error:
            raise InfeasibleConfigError(f"pool {o.design.name}: {o.error}")
    ver: dict[str, Any] | None = None
    if s.simulate:
        ver = _verify(s, mix, {j.key: j for j in jobs}, by, runner, on_round)
        homo, short, long = by["homogeneous"], by["short"], by["long"]
    price = s.price
    alpha = short.share
    rejected_share = 1.0 - homo.share
    out: dict[str, Any] = {
        "inputs": {
            "workload": mix.description,
            "requests": len(mix),
            "rate": s.rate,
            "model": s.model.name,
            "weight_dtype": s.model.weight_dtype,
            "gpu": s.gpu.name,
            "price_per_gpu_hour": price,
            "ttft_slo_s": s.ttft_slo_s,
            "tpot_slo_s": s.tpot_slo_s,
            "utilization_cap": s.utilization,
            "b_short": s.b_short,
            "memory_check": s.check_memory,
            "simulated": s.simulate,
        },
        "alpha": alpha,
        "rejected_share": rejected_share,
        "alpha_by_budget": {str(b): mix.alpha(b) for b in (*SWEEP_BUDGETS, s.b_short)},
    }
    hp, sp, lp = homo.profile, short.profile, long.profile
    rho = rho_mix = None
    if sp is not None and hp is not None:
        # rho on the real mix: short instance on its share vs a long-config
        # instance on the whole mix (what the short traffic ran on before).
        rho_mix = sp.mu / hp.mu
        rho = rho_mix
    out["rho"] = rho
    out["rho_per_gpu"] = (sp.mu / sp.tp) / (hp.mu / hp.tp) if sp and hp else None
    if sp is not None and hp is not None:
        assert rho is not None
        cf = closed_form_saving(alpha, rho)
        cf_gpu = closed_form_saving_gpus(
            alpha, sp.mu, lp.mu if lp else hp.mu, sp.tp, lp.tp if lp else hp.tp, hp.mu
        )
        u = s.utilization
        g_h = pool_instances(s.rate * homo.share, hp.mu, u)
        g_s = pool_instances(s.rate * alpha, sp.mu, u)
        g_l = pool_instances(s.rate * long.share, lp.mu, u) if lp else 0
        homo_d = g_h * homo.design.tp
        split_d = g_s * short.design.tp + g_l * long.design.tp
        out["closed_form"] = {
            "saving": cf,
            "saving_gpu_weighted": cf_gpu,
            "formula": "alpha * (1 - 1/rho)",
        }
        out["discrete"] = {
            "formula": "ceil(alpha*lambda/(u*mu_short)) + ceil((1-alpha)*lambda/(u*mu_long))",
            "homogeneous_instances": g_h,
            "short_instances": g_s,
            "long_instances": g_l,
            "homogeneous_gpus": homo_d,
            "split_gpus": split_d,
            "saving": 1.0 - split_d / homo_d if homo_d else 0.0,
        }

    conf = s.verify.confidence

    def fleet(name: str, parts: Sequence[PoolOutcome]) -> dict[str, Any]:
        gpus = sum(p.gpus for p in parts)
        d = _cost(gpus, price)
        d["instances"] = {p.design.name: p.instances for p in parts}
        d["pools"] = [p.as_dict() for p in parts]
        vs = [(p.share, p.verified) for p in parts if p.verified is not None and p.verified.final]
        if ver is not None and vs:
            tot = sum(w for w, _ in vs) or 1.0
            d["preemptions_per_1k"] = (
                sum(w * float(np.mean([f.preemptions_per_1k for f in pv.final])) for w, pv in vs)
                / tot
            )
            d["rejected"] = sum(f.rejected for _, pv in vs for f in pv.final)
            p99 = ver["fleet_p99"][name]
            ti, pi = interval(p99["ttft"], conf), interval(p99["tpot"], conf)
            d["ttft_p99_s"], d["tpot_p99_s"] = ti.mean, pi.mean
            d["ttft_p99_ci"], d["tpot_p99_ci"] = ti.as_dict(), pi.as_dict()
            d["gpus_needed"] = interval(ver["needed_gpus"][name], conf).as_dict()
            d["slo_confidence"] = min(pv.slo_confidence for _, pv in vs)
        d["samples"] = _mixture_samples([(w, pv.final[0]) for w, pv in vs]) if vs else {}
        return d

    out["homogeneous"] = fleet("homogeneous", [homo])
    split_parts = [p for p in (short, long) if p.share > 0]
    out["split"] = fleet("split", split_parts)
    hg, sg = out["homogeneous"]["gpus"], out["split"]["gpus"]
    out["usd_saved_per_year"] = out["homogeneous"]["usd_per_year"] - out["split"]["usd_per_year"]
    hga = (homo.analytic.instances if homo.analytic else 0) * homo.design.tp
    sga = sum((p.analytic.instances if p.analytic else 0) * p.design.tp for p in split_parts)
    out["analytic_saving"] = 1.0 - sga / hga if hga else 0.0
    out["saving_provisioned"] = 1.0 - sg / hg if hg else 0.0
    if ver is not None:
        sv: Interval = ver["saving"]
        out["saving"] = sv.mean
        out["saving_ci"] = sv.as_dict()
        # The verdict: split only when the saving is above min_saving with
        # the plan's confidence (one-sided t-test over the paired windows).
        c = one_sided_confidence([s.min_saving - x for x in ver["savings"]])
        out["recommendation"] = "split" if c >= conf else "homogeneous"
        out["recommendation_confidence"] = c
        out["verification"] = ver["info"]
    else:
        out["saving"] = out["saving_provisioned"]
        out["saving_ci"] = None
        out["recommendation"] = "split" if recommend_split(hg, sg, s.min_saving) else "homogeneous"
        out["recommendation_confidence"] = None
        out["verification"] = None
    out["rate_curve"] = _rate_curve(s, homo, split_parts)
    # Sweep of B_short.
    sweep = []
    sweep_ver = ver["sweep"] if ver is not None else {}
    for b in s.sweep_budgets:
        if b == s.b_short:
            parts = split_parts
        else:
            found = [by.get(f"sweep:{b}:short"), by.get(f"sweep:{b}:long")]
            parts = [o for o in found if o is not None and o.share > 0]
            if not parts:
                continue
        row = _split_summary(s, homo, parts, b)
        row["alpha"] = mix.alpha(b)
        row["saving"], row["saving_ci"] = None, None
        if b == s.b_short and ver is not None:
            row["saving"], row["saving_ci"] = out["saving"], out["saving_ci"]
        elif b in sweep_ver:
            row["saving"], row["saving_ci"] = sweep_ver[b].mean, sweep_ver[b].as_dict()
        sweep.append(row)
    out["sweep"] = _sweep_summary(sweep, verified=s.simulate and s.simulate_sweep)
    three = [by[k] for k in ("three:short", "three:mid", "three:long") if k in by]
    if three:
        parts = [p for p in three if p.share > 0]
        row = _split_summary(s, homo, parts, three[0].design.budget)
        row["pools"] = [p.as_dict() for p in parts]
        out["three_pool"] = row
    return out


def _sweep_summary(rows: list[dict[str, Any]], verified: bool) -> dict[str, Any]:
    key = "saving" if verified else "analytic_saving"
    valid = [r for r in rows if not r["errors"]]
    if not valid:
        return {"rows": rows, "basis": key, "best": None, "range_80": None}
    best = max(valid, key=lambda r: r[key])
    keep = [r["b_short"] for r in valid if best[key] > 0 and r[key] >= 0.8 * best[key]]
    return {
        "rows": rows,
        "basis": key,
        "best": {"b_short": best["b_short"], "saving": best[key]},
        "range_80": [min(keep), max(keep)] if keep else None,
    }


def _mixture_p99(
    parts: list[tuple[float, tuple[float, ...]]], fallback: list[float]
) -> float | None:
    """P99 of the traffic-weighted mixture of per-pool samples."""
    if not all(vals for _, vals in parts):
        finite = [x for x in fallback if math.isfinite(x)]
        return max(finite) if finite else None
    xs = np.concatenate([np.asarray(v) for _, v in parts])
    ws = np.concatenate([np.full(len(v), w / len(v)) for w, v in parts])
    order = np.argsort(xs)
    cdf = np.cumsum(ws[order]) / ws.sum()
    i = int(np.searchsorted(cdf, 0.99))
    return float(xs[order][min(i, xs.size - 1)])


def _mixture_samples(
    sims: Sequence[tuple[float, PoolSim]], n: int = 4000
) -> dict[str, list[float]]:
    """Up to n simulated requests, drawn from each pool in proportion to its share."""
    tot = sum(w for w, _ in sims) or 1.0
    out: dict[str, list[float]] = {"ttft": [], "tpot": []}
    for w, c in sims:
        k = min(len(c.ttft), round(n * w / tot))
        if k <= 0:
            continue
        idx = np.linspace(0, len(c.ttft) - 1, k).round().astype(np.int64)
        out["ttft"] += [c.ttft[i] for i in idx.tolist()]
        out["tpot"] += [c.tpot[i] for i in idx.tolist()]
    return out
