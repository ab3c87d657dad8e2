"""What one instance of a pool does on the workload's own length mix.

Two layers, both from the engine model (`dualpool.engine`), no simulator:

1. `profile_instance`: a closed batch of the pool's requests (a strided
   sample of the mix, repeated if the pool gets few) queued at t = 0 on one
   instance and run to completion by the v1 `Scheduler`. Throughput mu is
   measured between the 10th and 90th percentile completions, where the
   instance is full (the ramp-up and the drain are left out). The same run
   gives the slots a full instance really holds (time-averaged running
   batch; the KV cache may hold fewer than max_num_seqs), preemptions and
   TPOT at saturation.

2. `analytic_pool_size`: the SLO-aware queueing estimate. For a per-instance
   arrival rate x it solves the mean engine step (all in seconds)::

       dt = step_time(tokens = N + x P dt, seqs = N,
                      kv_read = N ctx, pairs = N ctx + x dt E[P^2] / 2)
       N  = x dt (O + 1)                 (Little: each request spends O + 1 steps)

   P and O are the pool's mean prompt and output, ctx = P + O / 2. Then

       TPOT p99 ~ dt at N99 = N + 2.33 sqrt(N)   (M/G/inf occupancy is Poisson)
       TTFT p99 ~ W99 + prefill99
       W99      = M/G/c wait quantile, c = slots, S = dt (O + 1), cv from the mix
       prefill99 = steps for the p99 prompt at budget B - N, each dt + chunk x c_lin

   and the pool needs the smallest G whose x = lambda_pool / G meets both
   SLOs and x <= u mu. Approximations: Poisson arrivals, a random split of
   traffic over instances (no load balancing: conservative), one mean step
   shape (no per-step burstiness), no preemption. The simulation checks it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from dualpool.engine import (
    EngineConfig,
    GPUSpec,
    MemoryPlan,
    ModelSpec,
    Scheduler,
    StepTimeModel,
    StepTimeParams,
    plan_memory,
)
from dualpool.errors import ConfigError, InfeasibleConfigError
from dualpool.planner._queueing import mgc_wait_quantile, pool_instances

__all__ = [
    "AnalyticSize",
    "InstanceProfile",
    "LoadPoint",
    "PoolDesign",
    "analytic_pool_size",
    "build_scheduler",
    "load_point",
    "memory_plan",
    "profile_instance",
]

_Z99 = 2.326  # standard normal 99th percentile


@dataclass(frozen=True, slots=True)
class PoolDesign:
    """One pool's engine config and routing threshold (instances come later)."""

    name: str
    engine: EngineConfig
    # Largest total budget routed here; None: the engine's max_model_len.
    threshold: int | None = None

    def __post_init__(self) -> None:
        t = self.threshold
        if t is not None and not 1 <= t <= self.engine.max_model_len:
            raise ConfigError(
                f"pools.{self.name}.threshold",
                f"must be in [1, max_model_len={self.engine.max_model_len}], got {t}",
            )

    @property
    def budget(self) -> int:
        """The largest request budget this pool takes."""
        return self.engine.max_model_len if self.threshold is None else self.threshold

    @property
    def tp(self) -> int:
        return self.engine.tensor_parallel_size

    def describe(self) -> str:
        e = self.engine
        return (
            f"{self.name} {e.max_model_len // 1024}K/{e.max_num_seqs}/"
            f"{e.max_num_batched_tokens // 1024}K TP{e.tensor_parallel_size}"
        )


def memory_plan(
    model: ModelSpec, gpu: GPUSpec, engine: EngineConfig, *, check: bool = True
) -> MemoryPlan:
    """vLLM's start-up account; with check=False, infeasible plans come back too."""
    return plan_memory(model, gpu, engine, check=check)


def _assumed_blocks(engine: EngineConfig) -> int:
    per_seq = -(-engine.max_model_len // engine.block_size)
    return per_seq * engine.max_num_seqs


def build_scheduler(
    model: ModelSpec,
    gpu: GPUSpec,
    engine: EngineConfig,
    step_params: StepTimeParams | None = None,
    *,
    check: bool = True,
) -> Scheduler:
    """An instance; with check=False an infeasible config gets the KV it asks for.

    NOTE: with check=False the KV cache is sized to hold max_num_seqs
    sequences of max_model_len (the memory the config *assumes*), not what
    the GPU has: it models the paper's setting as the paper states it.
    """
    if check:
        return Scheduler.from_specs(model, gpu, engine, step_params)
    plan = plan_memory(model, gpu, engine, check=False)
    blocks = max(plan.num_gpu_blocks, _assumed_blocks(engine))
    return Scheduler(engine, blocks, StepTimeModel(model, gpu, engine, step_params), plan)


@dataclass(frozen=True, slots=True)
class InstanceProfile:
    """One instance of a pool, saturated on the pool's share of the workload."""

    pool: str
    tp: int
    # Requests/s one full instance completes (mu).
    mu: float
    # Time-averaged running batch while full (<= max_num_seqs; KV may cap it).
    slots: float
    # Mean seconds a request holds a slot at saturation (slots / mu).
    service_s: float
    # Mean engine step at saturation, seconds.
    step_s: float
    # Coefficient of variation of a request's steps in a slot (O + prefill steps).
    service_cv: float
    tpot_p50_s: float
    tpot_p99_s: float
    preemptions_per_1k: float
    # Requests in the sample, and how many distinct ones (repeated when few).
    sample: int
    distinct: int
    # Mix statistics of the pool's requests.
    mean_prompt: float
    mean_output: float
    # 64 equally likely prompt sizes (quantiles of the pool's prompts).
    prompt_quantiles: npt.NDArray[np.float64] = field(repr=False)
    # Output lengths of the sample (for the TPOT tail).
    output_sample: npt.NDArray[np.int64] = field(repr=False)
    max_num_seqs: int
    max_num_batched_tokens: int
    # The engine's memory check passed (False: the paper setting, check off).
    feasible: bool
    # Seeds the TPOT tail draw (repeatable).
    seed: int = 0


def _sample_indices(n: int, size: int) -> npt.NDArray[np.int64]:
    """`size` indices spread over range(n), cycling when n < size."""
    if n >= size:
        return np.linspace(0, n - 1, size).round().astype(np.int64)
    return np.arange(size, dtype=np.int64) % n


def profile_instance(
    model: ModelSpec,
    gpu: GPUSpec,
    design: PoolDesign,
    prompt: npt.NDArray[np.int64],
    output: npt.NDArray[np.int64],
    *,
    step_params: StepTimeParams | None = None,
    check: bool = True,
    sample: int | None = None,
) -> InstanceProfile:
    """Saturated throughput and shape of one instance on this mix (see module doc).

    `prompt`/`output` are the token counts of the requests routed to this
    pool (all must fit its max_model_len). Raises InfeasibleConfigError when
    the config does not fit and check is on.
    """
    if prompt.size == 0:
        raise ConfigError(f"pools.{design.name}", "no requests of the workload reach this pool")
    engine = design.engine
    size = sample or min(3000, max(400, 16 * engine.max_num_seqs))
    idx = _sample_indices(int(prompt.size), size)
    p = prompt[idx].tolist()
    o = output[idx].tolist()
    sched = build_scheduler(model, gpu, engine, step_params, check=check)
    reqs = [
        sched.add_request(str(i), max(1, a), max(1, b), 0.0)
        for i, (a, b) in enumerate(zip(p, o, strict=True))
    ]
    rejected = [r for r in reqs if r.error is not None]
    if rejected:
        raise ConfigError(
            f"pools.{design.name}",
            f"{len(rejected)} sampled request(s) exceed max_model_len {engine.max_model_len}",
        )
    n = len(reqs)
    lo_k, hi_k = max(0, int(0.1 * n)), max(1, int(0.9 * n)) - 1
    finish_times: list[float] = []
    now = 0.0
    busy_seq_time = 0.0  # integral of len(running) dt
    steps = 0
    full_start = full_end = None
    while sched.has_unfinished_requests:
        before = len(finish_times)
        running = sched.num_running
        ff = sched.fast_forward(now)
        if ff.steps:
            busy_seq_time += running * (ff.now - now)
            now = ff.now
            steps += ff.steps
            finish_times.extend(ff.now for _ in ff.finished)
        else:
            out, res = sched.step(now)
            busy_seq_time += out.num_scheduled_seqs * (res.now - now)
            now = res.now
            steps += 1
            finish_times.extend(res.now for _ in res.finished)
            if out.is_empty and not res.finished:
                raise InfeasibleConfigError(
                    f"{design.describe()}: the instance stalls (a request cannot get KV blocks); "
                    f"{sched.kv.num_gpu_blocks} blocks of {engine.block_size} tokens"
                )
        if full_start is None and len(finish_times) > lo_k >= before:
            full_start = (finish_times[lo_k], busy_seq_time, now)
        if full_end is None and len(finish_times) > hi_k >= before:
            full_end = (finish_times[hi_k], busy_seq_time, now)
    assert full_start is not None and full_end is not None
    span = finish_times[hi_k] - finish_times[lo_k]
    mu = (hi_k - lo_k) / span if span > 0 and hi_k > lo_k else n / now
    seq_span = full_end[2] - full_start[2]
    slots = (full_end[1] - full_start[1]) / seq_span if seq_span > 0 else busy_seq_time / now
    tpots = np.asarray([r.tpot for r in reqs if r.tpot is not None and r.num_output_tokens > 1])
    pm = np.asarray(p, dtype=np.float64)
    om = np.asarray(o, dtype=np.float64)
    chunk = max(1.0, engine.max_num_batched_tokens - slots)
    steps_in_slot = om + np.ceil(pm / chunk)
    cv = float(steps_in_slot.std() / steps_in_slot.mean()) if steps_in_slot.mean() > 0 else 1.0
    return InstanceProfile(
        pool=design.name,
        tp=engine.tensor_parallel_size,
        mu=mu,
        slots=max(1.0, slots),
        service_s=max(1.0, slots) / mu,
        step_s=now / steps if steps else 0.0,
        service_cv=cv,
        tpot_p50_s=float(np.percentile(tpots, 50)) if tpots.size else 0.0,
        tpot_p99_s=float(np.percentile(tpots, 99)) if tpots.size else 0.0,
        preemptions_per_1k=1000.0 * sched.num_preemptions_total / n,
        sample=n,
        distinct=int(min(prompt.size, size)),
        mean_prompt=float(pm.mean()),
        mean_output=float(om.mean()),
        prompt_quantiles=np.quantile(pm, (np.arange(64) + 0.5) / 64),
        output_sample=np.asarray(o, dtype=np.int64),
        max_num_seqs=engine.max_num_seqs,
        max_num_batched_tokens=engine.max_num_batched_tokens,
        feasible=check,
    )


@dataclass(frozen=True, slots=True)
class LoadPoint:
    """The analytic model of one instance at per-instance arrival rate x."""

    rate: float
    # x / mu.
    utilization: float
    # Mean running sequences.
    occupancy: float
    # Decode-only step at the mean occupancy, seconds.
    decode_step_s: float
    # Share of engine steps that carry a prefill chunk.
    prefill_step_share: float
    tpot_p99_s: float
    wait_p99_s: float
    prefill_p99_s: float
    # False when the instance cannot keep up (prefill time or slots exhausted).
    stable: bool

    @property
    def ttft_p99_s(self) -> float:
        return self.wait_p99_s + self.prefill_p99_s


def _unstable(rate: float, mu: float, n: float) -> LoadPoint:
    inf = math.inf
    return LoadPoint(rate, rate / mu, n, inf, 1.0, inf, inf, inf, False)


def load_point(profile: InstanceProfile, timing: StepTimeModel, rate: float) -> LoadPoint:
    """The instance at arrival rate `rate` (req/s), by the step-time accounting.

    Steps are of two kinds. A prompt of P tokens is prefilled in
    ceil(P / (B - N)) steps that also carry the N running decodes (compute
    bound for prompts of a few hundred tokens); the time left in each second
    goes to decode-only steps of N sequences (memory bound)::

        x E[T_pf(P)] + k d(N) = 1        k decode-only steps per second
        steps/s = x E[chunks] + k        TPOT mean = 1 / steps/s
        N = x (O + chunks) / steps/s     (Little)

    A request with O output tokens sees O - 1 inter-token gaps; each lands on
    a prefill step with probability q = x E[chunks] / steps/s and then lasts
    T_pf instead of d. Its TPOT is d + (T_pf - d) K / (O - 1) with K binomial:
    the P99 over the pool's output mix (seeded draw) is the TPOT estimate.
    TTFT = M/G/c wait for a slot + own prefill + the rest of the step in
    progress.
    """
    pr = profile
    if rate <= 0:
        rate = 1e-12
    prompts = pr.prompt_quantiles
    ctx = pr.mean_prompt + pr.mean_output / 2.0
    budget = pr.max_num_batched_tokens
    n = 0.0
    d = tpf_mean = chunks_mean = steps = 0.0
    tpf = np.zeros_like(prompts)
    for _ in range(100):
        room = max(1.0, budget - n)
        chunks = np.ceil(prompts / room)
        size = prompts / chunks
        kv = n * ctx
        seqs = max(1, round(n) + 1)
        tpf = np.asarray(
            [
                c * timing.step_time_raw(round(s + n), seqs, round(kv), round(kv + s * s / 2.0))
                for c, s in zip(chunks.tolist(), size.tolist(), strict=True)
            ]
        )
        d = timing.decode_step_time(max(1, round(n)), round(kv))
        tpf_mean = float(tpf.mean())
        chunks_mean = float(chunks.mean())
        busy = rate * tpf_mean
        if busy >= 1.0:
            return _unstable(rate, pr.mu, n)
        steps = rate * chunks_mean + (1.0 - busy) / d
        new_n = rate * (pr.mean_output + chunks_mean) / steps
        if new_n > 4 * pr.slots:
            return _unstable(rate, pr.mu, new_n)
        done = abs(new_n - n) <= 1e-4 * (1.0 + n)
        n = new_n
        if done:
            break
    if n >= pr.slots:
        return _unstable(rate, pr.mu, n)
    q = min(1.0, rate * chunks_mean / steps)
    # Gaps on prefill steps: the excess over a decode step, per chunk.
    excess = np.maximum(tpf / np.ceil(prompts / max(1.0, budget - n)) - d, 0.0)
    ex_mean, ex_sd = float(excess.mean()), float(excess.std())
    outs = pr.output_sample
    outs = outs[outs >= 2]
    if outs.size:
        rng = np.random.default_rng(pr.seed)
        gaps = outs - 1
        k = rng.binomial(gaps.astype(np.int64), q).astype(np.float64)
        extra = k * ex_mean + np.sqrt(k) * ex_sd * np.abs(rng.standard_normal(k.size))
        n99 = n + _Z99 * math.sqrt(n)
        d99 = timing.decode_step_time(max(1, round(n99)), round(n99 * ctx))
        tpot99 = float(np.percentile(d99 + extra / gaps, 99))
    else:
        tpot99 = 0.0
    servers = max(1, math.floor(pr.slots))
    service = (pr.mean_output + chunks_mean) / steps
    wait99 = mgc_wait_quantile(servers, rate, service, 0.99, pr.service_cv)
    # The step in progress when a request arrives: its remaining time
    # (renewal residual E[T^2] / 2E[T] over prefill and decode steps).
    k_dec = steps - rate * chunks_mean
    per_chunk = tpf / np.ceil(prompts / max(1.0, budget - n))
    second = rate * float((per_chunk**2 * np.ceil(prompts / max(1.0, budget - n))).mean())
    residual = (second + k_dec * d * d) / 2.0
    prefill99 = float(np.percentile(tpf, 99)) + residual
    return LoadPoint(rate, rate / pr.mu, n, d, q, tpot99, wait99, prefill99, True)


@dataclass(frozen=True, slots=True)
class AnalyticSize:
    """The analytic instance count of one pool, and why."""

    pool: str
    rate: float
    # Discrete form: ceil(rate / (u mu)).
    discrete: int
    # Smallest count meeting the SLOs by the queueing model (>= discrete).
    instances: int
    # The load point at `instances`.
    point: LoadPoint | None
    # Which constraint set the count: "utilization", "ttft", "tpot", "none".
    binding: str
    # False when no count meets the SLOs (an idle instance already misses them).
    attainable: bool
    # The floor an idle instance reaches (TTFT, TPOT), seconds.
    idle_ttft_s: float
    idle_tpot_s: float
    # How `instances` was found: "mgc" (the closed-form queueing model above)
    # or "calibrated" (the simulated load curve, `_calibrate`).
    method: str = "mgc"
    # The closed-form queueing model's count (kept beside a calibrated one).
    mgc_instances: int | None = None
    # Calibrated: the largest per-instance load meeting the SLOs (req/s).
    max_rate_per_instance: float | None = None


def analytic_pool_size(
    profile: InstanceProfile,
    timing: StepTimeModel,
    rate: float,
    *,
    ttft_s: float,
    tpot_s: float,
    utilization: float,
) -> AnalyticSize:
    """Smallest instance count whose per-instance load meets both P99 SLOs."""
    if rate <= 0:
        return AnalyticSize(profile.pool, rate, 0, 0, None, "none", True, 0.0, 0.0)
    g0 = pool_instances(rate, profile.mu, utilization)
    idle = load_point(profile, timing, rate * 1e-9)

    def ok(g: int) -> bool:
        pt = load_point(profile, timing, rate / g)
        return pt.stable and pt.ttft_p99_s <= ttft_s and pt.tpot_p99_s <= tpot_s

    attainable = idle.ttft_p99_s <= ttft_s and idle.tpot_p99_s <= tpot_s
    if not attainable or ok(g0):
        pt = load_point(profile, timing, rate / g0)
        return AnalyticSize(
            profile.pool,
            rate,
            g0,
            g0,
            pt,
            "utilization",
            attainable,
            idle.ttft_p99_s,
            idle.tpot_p99_s,
        )
    lo, hi = g0, g0 * 2
    while not ok(hi):
        lo, hi = hi, hi * 2
        if hi > g0 * 1024:  # pragma: no cover (attainable at idle implies some g works)
            break
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    pt = load_point(profile, timing, rate / hi)
    below = load_point(profile, timing, rate / (hi - 1)) if hi > 1 else pt
    if not below.stable:
        binding = "stability"
    elif below.tpot_p99_s > tpot_s:
        binding = "tpot"
    else:
        binding = "ttft"
    return AnalyticSize(
        profile.pool, rate, g0, hi, pt, binding, True, idle.ttft_p99_s, idle.tpot_p99_s
    )


def with_tp(engine: EngineConfig, tp: int) -> EngineConfig:
    return replace(engine, tensor_parallel_size=tp)
