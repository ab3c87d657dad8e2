"""Roofline model of one engine step, with closed forms for decode runs.

One step processes `num_tokens` new tokens (prefill chunks + one per decode
sequence) of `num_seqs` sequences. Per GPU of the TP group::

    compute = (2 x active_params / TP x num_tokens          linear layers
               + 4 x layers x heads / TP x head_dim x attention_pairs)
              / (peak FLOP/s x flops_efficiency)
    memory  = (weights read + kv_bytes_per_token x kv_read_tokens)
              / (HBM bandwidth x bandwidth_efficiency)
    comm    = 2 x layers x AllReduceModel.time(num_tokens x hidden x 2 B)    [TP > 1]
              (vLLM's custom all-reduce on NVLink/xGMI up to 8 MiB, else NCCL's
              ring; PCIe-only machines always use NCCL, see AllReduceModel)
    step    = step_overhead + per_seq_overhead x num_seqs + comm
              + max(compute, memory)

`attention_pairs` is the number of (query, key) pairs attended: a chunk of t
tokens after p cached ones adds t*p + t(t+1)/2, a decode adds p + 1.
`kv_read_tokens` is the cached context read (p per scheduled sequence).

Weights read: the whole shard for dense models. For MoE, the non-expert
weights plus the experts actually hit: with E experts, top-k routing and
n tokens, the expected fraction of experts hit is 1 - (1 - k/E)^n (uniform
routing). At n = 1 this is exactly the active parameters; at batch 64 of
Qwen3-235B (k/E = 8/128) it is 98% of all experts. It depends only on n, so
the decode-run closed forms below stay exact.

Linear layers run at the FP8 rate when the weights are FP8 and the GPU has
FP8 tensor cores (W8A8), else at the BF16 rate; attention runs at BF16.

Decode runs. With n decode-only sequences and total cached context C, step j
(j = 0, 1, ...) of a run reads C + j n context tokens, so its time is
`a + max(c0 + c1 j, m0 + m1 j)`: the maximum of two linear functions, which
crosses at most once. `decode_run_time(n, C, k)` sums k steps in O(1);
`steps_within(n, C, budget)` inverts it by binary search on that closed form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol

from dualpool.engine.config import EngineConfig
from dualpool.engine.memory import kv_bytes_per_token
from dualpool.engine.specs import GPUSpec, ModelSpec
from dualpool.engine.step_params import StepTimeParams
from dualpool.errors import ConfigError

__all__ = [
    "AllReduceModel",
    "DecodePoint",
    "PrefillPoint",
    "ProfileTableModel",
    "StepShape",
    "StepTimeModel",
    "StepTimeParams",
    "calibrate",
    "load_profile_table",
]


class StepShape(Protocol):
    """What the timing model needs from a scheduler output."""

    @property
    def total_num_scheduled_tokens(self) -> int: ...
    @property
    def num_scheduled_seqs(self) -> int: ...
    @property
    def kv_read_tokens(self) -> int: ...
    @property
    def attention_pairs(self) -> int: ...


class AllReduceModel:
    """Seconds of one all-reduce of S bytes across a TP group (alpha-beta model).

    Which algorithm vLLM 0.19 uses (vllm/distributed/device_communicators/
    custom_all_reduce.py and cuda_communicator.py):

    - NVLink / xGMI (peer-to-peer): vLLM's custom all-reduce for messages up
      to 8 MiB (its max_size), one-shot or two-shot: about
      `allreduce_latency_s + 2 (TP-1)/TP x S / (link x eff)`;
    - otherwise NCCL's ring: `nccl_latency_s + 2 (TP-1)/TP x S / (link x eff)`.
      On PCIe-only machines vLLM disables the custom all-reduce ("not
      supported on more than two PCIe-only GPUs"; GeForce cards have no P2P
      at all), so every all-reduce is NCCL's, whose small-message latency
      over PCIe is tens of microseconds (nccl-tests all_reduce_perf on PCIe
      Gen4/Gen5 boxes: 20-40 us at 8 B-64 KiB; the default 30 us) against
      under 10 us for the custom kernel over NVLink.

    `link` is the GPU's interconnect_bandwidth per direction (NVLink 4: 450
    GB/s on H100; PCIe 4.0 x16: 32 GB/s; PCIe 5.0 x16: 64 GB/s).
    """

    __slots__ = ("_bw", "_custom", "_ring", "custom_max_bytes", "params", "tp")

    # vLLM's CustomAllreduce max_size (8 MiB).
    CUSTOM_MAX_BYTES = 8 * 1024 * 1024

    def __init__(self, gpu: GPUSpec, tp: int, params: StepTimeParams) -> None:
        self.tp = tp
        self.params = params
        self._bw = gpu.interconnect_bandwidth * params.interconnect_efficiency
        self._ring = 2.0 * (tp - 1) / tp if tp > 1 else 0.0
        self._custom = gpu.link != "pcie" and tp > 1
        self.custom_max_bytes = float(self.CUSTOM_MAX_BYTES if self._custom else 0)

    def latency(self, *, small: bool) -> float:
        if self.tp <= 1:
            return 0.0
        if small and self._custom:
            return self.params.allreduce_latency_s
        return self.params.nccl_latency_s

    def seconds_per_byte(self, *, small: bool) -> float:
        del small  # both algorithms move 2 (TP-1)/TP x S bytes per GPU
        return self._ring / self._bw if self.tp > 1 else 0.0

    def time(self, nbytes: float) -> float:
        """Seconds of one all-reduce of nbytes."""
        small = nbytes <= self.custom_max_bytes
        return self.latency(small=small) + self.seconds_per_byte(small=small) * nbytes


class StepTimeModel:
    """Step times of one instance (model x GPU x config x params).

    All per-token coefficients are precomputed, so a step time is a handful
    of float operations.
    """

    __slots__ = (
        "_ar_small_tokens",
        "_comm_fixed",
        "_comm_fixed_large",
        "_comm_per_token",
        "_comm_per_token_large",
        "_dense_weight_bytes",
        "_expert_bytes",
        "_expert_frac",
        "_flop_attn",
        "_flop_head",
        "_flop_linear",
        "_is_moe",
        "_kv_per_token",
        "_overhead",
        "_per_seq",
        "_run_cache",
        "_weight_cache",
        "bandwidth_efficiency",
        "config",
        "flops_efficiency",
        "gpu",
        "model",
        "params",
    )

    def __init__(
        self,
        model: ModelSpec,
        gpu: GPUSpec,
        config: EngineConfig,
        params: StepTimeParams | None = None,
    ) -> None:
        self.model = model
        self.gpu = gpu
        self.config = config
        self.params = p = params or StepTimeParams()
        tp = config.tensor_parallel_size
        fe, be = p.resolved(gpu.flops_efficiency, gpu.bandwidth_efficiency)
        self.flops_efficiency = fe
        self.bandwidth_efficiency = be
        bw = gpu.hbm_bandwidth * be
        bf16 = gpu.bf16_flops * fe
        linear_rate = (
            gpu.fp8_flops * fe if model.weight_dtype == "fp8" and gpu.fp8_flops > 0 else bf16
        )
        # Seconds per unit of work. Every scheduled token goes through the
        # decoder's linear layers; the input embedding is a lookup (no FLOPs)
        # and the LM head runs only on each sequence's last position (vLLM
        # computes logits at logits_indices, one row per scheduled request),
        # so their parameters are charged per sequence, not per token.
        head = model.vocab_size * model.hidden_size
        decoder = model.num_active_params - model.num_embedding_params
        self._flop_linear = 2.0 * decoder / tp / linear_rate
        self._flop_head = 2.0 * head / tp / bf16
        heads_per_gpu = model.num_attention_heads / tp
        self._flop_attn = 4.0 * model.num_layers * heads_per_gpu * model.head_dim / bf16
        self._kv_per_token = kv_bytes_per_token(model, config) / bw
        expert_bytes = model.expert_params * model.weight_bytes_per_param / tp
        self._expert_bytes = expert_bytes / bw
        # An untied input embedding table is only indexed (a few rows a
        # step), not streamed: every other weight is read once per step.
        input_embedding = max(0, model.num_embedding_params - head) * 2 / tp
        self._dense_weight_bytes = (model.weight_bytes / tp - expert_bytes - input_embedding) / bw
        self._expert_frac = model.num_experts_per_tok / model.num_experts if model.is_moe else 1.0
        self._is_moe = model.is_moe
        self._weight_cache: dict[int, float] = {}
        self._run_cache: dict[int, tuple[float, float, float, float, float]] = {}
        ar = AllReduceModel(gpu, tp, p)
        token_bytes = model.hidden_size * 2.0  # one BF16 activation row
        per_step = 2.0 * model.num_layers  # two all-reduces per layer (attention, MLP)
        # comm(n) = fixed + per_token * n, one line up to the custom all-reduce's
        # size limit and another (NCCL) above it: a function of n alone, so the
        # decode-run closed forms keep it in their per-n constant.
        self._ar_small_tokens = int(ar.custom_max_bytes // token_bytes)
        self._comm_fixed = per_step * ar.latency(small=True)
        self._comm_per_token = per_step * ar.seconds_per_byte(small=True) * token_bytes
        self._comm_fixed_large = per_step * ar.latency(small=False)
        self._comm_per_token_large = per_step * ar.seconds_per_byte(small=False) * token_bytes
        self._overhead = p.step_overhead_s
        self._per_seq = p.per_seq_overhead_s

    # -- one step ------------------------------------------------------------

    def weight_read_time(self, num_tokens: int) -> float:
        """Seconds to stream the weights a step of num_tokens tokens touches."""
        t = self._weight_cache.get(num_tokens)
        if t is None:
            if self._is_moe and num_tokens > 0:
                hit = 1.0 - (1.0 - self._expert_frac) ** num_tokens
            else:
                hit = 1.0
            t = self._dense_weight_bytes + self._expert_bytes * hit
            if len(self._weight_cache) < 65536:
                self._weight_cache[num_tokens] = t
        return t

    def step_time_raw(
        self, num_tokens: int, num_seqs: int, kv_read_tokens: int, attention_pairs: int
    ) -> float:
        """Seconds of one step of this shape (0 for an empty step)."""
        if num_tokens <= 0:
            return 0.0
        compute = (
            self._flop_linear * num_tokens
            + self._flop_head * num_seqs
            + self._flop_attn * attention_pairs
        )
        w = self._weight_cache.get(num_tokens)
        if w is None:
            w = self.weight_read_time(num_tokens)
        memory = w + self._kv_per_token * kv_read_tokens
        if num_tokens <= self._ar_small_tokens:
            comm = self._comm_fixed + self._comm_per_token * num_tokens
        else:
            comm = self._comm_fixed_large + self._comm_per_token_large * num_tokens
        return (
            self._overhead
            + self._per_seq * num_seqs
            + comm
            + (compute if compute > memory else memory)
        )

    def comm_time(self, num_tokens: int) -> float:
        """Seconds of a step's all-reduces (two per layer) for num_tokens tokens."""
        if num_tokens <= self._ar_small_tokens:
            return self._comm_fixed + self._comm_per_token * num_tokens
        return self._comm_fixed_large + self._comm_per_token_large * num_tokens

    def step_time(self, output: StepShape) -> float:
        """Seconds of the step a scheduler output describes."""
        return self.step_time_raw(
            output.total_num_scheduled_tokens,
            output.num_scheduled_seqs,
            output.kv_read_tokens,
            output.attention_pairs,
        )

    def prefill_time(self, prompt_tokens: int) -> float:
        """One whole-prompt prefill step alone (no cached context)."""
        pairs = prompt_tokens * (prompt_tokens + 1) // 2
        return self.step_time_raw(prompt_tokens, 1, 0, pairs)

    # -- decode runs ---------------------------------------------------------

    def _decode_coeffs(self, n: int, ctx: int) -> tuple[float, float, float, float, float]:
        """Step j of a decode run costs a + max(c0 + c1 j, m0 + m1 j)."""
        a = self._overhead + self._per_seq * n + self.comm_time(n)
        # attention_pairs = ctx + j n + n, kv_read = ctx + j n
        c0 = (self._flop_linear + self._flop_head) * n + self._flop_attn * (ctx + n)
        c1 = self._flop_attn * n
        m0 = self.weight_read_time(n) + self._kv_per_token * ctx
        m1 = self._kv_per_token * n
        return a, c0, c1, m0, m1

    def decode_step_time(self, num_seqs: int, total_context_tokens: int) -> float:
        """One decode-only step: num_seqs sequences holding this much context."""
        return self.step_time_raw(
            num_seqs, num_seqs, total_context_tokens, total_context_tokens + num_seqs
        )

    def _run_coeffs(self, n: int) -> tuple[float, float, float, float, float]:
        """(a, linear FLOP time, c1, weight read time, m1) of a decode run of n sequences."""
        co = self._run_cache.get(n)
        if co is None:
            a = self._overhead + self._per_seq * n + self.comm_time(n)
            co = (
                a,
                (self._flop_linear + self._flop_head) * n,
                self._flop_attn * n,
                self.weight_read_time(n),
                self._kv_per_token * n,
            )
            if len(self._run_cache) < 65536:
                self._run_cache[n] = co
        return co

    def decode_run_time(self, num_seqs: int, total_context_tokens: int, k: int) -> float:
        """Total seconds of k consecutive decode-only steps, in O(1).

        Each step every sequence's context grows by one token, so step j
        reads total_context_tokens + j x num_seqs cached tokens.
        """
        if k <= 0 or num_seqs <= 0:
            return 0.0
        # The same coefficients as _decode_coeffs, bit for bit, from a per-n cache.
        a, lin, c1, w, m1 = self._run_cache.get(num_seqs) or self._run_coeffs(num_seqs)
        ctx = total_context_tokens
        c0 = lin + self._flop_attn * (ctx + num_seqs)
        m0 = w + self._kv_per_token * ctx
        # D(j) = (c0 - m0) + (c1 - m1) j: compute-bound where D(j) > 0. The two
        # lines cross at most once, so the run is one or two linear pieces.
        d0 = c0 - m0
        d1 = c1 - m1
        if d1 == 0.0:
            if d0 > 0:
                u, v = c0, c1
            else:
                u, v = m0, m1
            # one piece over [0, k)
            return a * k + (u * k + v * (k - 1) * k / 2.0)
        # j <= root lies on the side of D(0); the tie D(j) = 0 costs the same
        # on either line.
        root = -d0 / d1
        split = min(k, max(0, math.floor(root) + 1)) if root >= 0 else 0
        if d1 > 0:
            u1, v1, u2, v2 = m0, m1, c0, c1
        else:
            u1, v1, u2, v2 = c0, c1, m0, m1
        total = a * k
        if split > 0:
            total += u1 * split + v1 * (split - 1) * split / 2.0
        if k > split:
            count = k - split
            total += u2 * count + v2 * (split + k - 1) * count / 2.0
        return total

    def steps_within(
        self, num_seqs: int, total_context_tokens: int, budget: float, limit: int | None = None
    ) -> int:
        """Largest k with decode_run_time(num_seqs, total_context_tokens, k) <= budget.

        With `limit`, the largest such k that is <= limit (a shorter search).
        """
        if budget <= 0.0 or num_seqs <= 0:
            return 0
        first = self.decode_step_time(num_seqs, total_context_tokens)
        if first > budget:
            return 0
        # Step times only grow along a run, so budget/first bounds k from above.
        hi = int(budget / first) + 1 if first > 0.0 else (limit or 1 << 30)
        if limit is not None and limit < hi:
            hi = max(1, limit)
        lo = 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.decode_run_time(num_seqs, total_context_tokens, mid) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def with_params(self, params: StepTimeParams) -> StepTimeModel:
        return StepTimeModel(self.model, self.gpu, self.config, params)


# -- calibration ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecodePoint:
    """A measured decode-only step: batch size, total cached context, seconds."""

    num_seqs: int
    total_context_tokens: int
    seconds: float


@dataclass(frozen=True, slots=True)
class PrefillPoint:
    """A measured single-prompt prefill step (no cached context), seconds."""

    prompt_tokens: int
    seconds: float


def calibrate(
    model: ModelSpec,
    gpu: GPUSpec,
    config: EngineConfig,
    decode: list[DecodePoint],
    prefill: list[PrefillPoint] | None = None,
    base: StepTimeParams | None = None,
) -> StepTimeParams:
    """Fit StepTimeParams to measured step times.

    Decode steps are taken as memory-bound (true for batch sizes below the
    roofline ridge, where compute overtakes weight streaming)::

        t - comm(n) = step_overhead + per_seq x n + bytes(n, ctx) / (BW x eff_bw)

    Least squares over the points gives step_overhead and 1/eff_bw (and
    per_seq_overhead when three or more batch sizes are given; else it is
    kept from `base`). The weights are streamed every step whatever the
    batch, so only a change in bytes read separates the overhead from the
    bandwidth: the points must differ in cached context (and, to fit
    per_seq_overhead, in batch size independently of the context). A long prefill is compute-bound::

        eff_flops = FLOPs(prompt) / (peak x (t - overhead - comm(prompt)))

    averaged over the prefill points.
    """
    base = base or StepTimeParams()
    if len(decode) < 2:
        raise ConfigError("decode", "need at least two decode measurements (e.g. batch 1 and 64)")
    unit = StepTimeModel(model, gpu, config, replace(base, bandwidth_efficiency=1.0))
    rows: list[list[float]] = []
    ys: list[float] = []
    fit_per_seq = len({p.num_seqs for p in decode}) >= 3
    for p in decode:
        n, ctx = p.num_seqs, p.total_context_tokens
        bytes_time = unit.weight_read_time(n) + unit._kv_per_token * ctx  # at eff 1.0
        comm = unit.comm_time(n)
        y = p.seconds - comm
        if fit_per_seq:
            rows.append([1.0, float(n), bytes_time])
        else:
            y -= base.per_seq_overhead_s * n
            rows.append([1.0, bytes_time])
        ys.append(y)
    # numpy only here: the gateway's lean install imports the engine but not numpy.
    import numpy as np

    matrix = np.array(rows)
    if np.linalg.matrix_rank(matrix) < matrix.shape[1]:
        raise ConfigError(
            "decode",
            "measurements cannot separate the fixed overhead from weight streaming: "
            "vary the cached context (e.g. batch 1 at 0 and 32K tokens)"
            + (" and the batch size independently of it" if fit_per_seq else ""),
        )
    sol, *_ = np.linalg.lstsq(matrix, np.array(ys), rcond=None)
    overhead = max(0.0, float(sol[0]))
    inv_eff = float(sol[-1])
    if inv_eff < 1.0:
        raise ConfigError(
            "decode",
            f"measurements imply {1 / inv_eff:.0%} of peak bandwidth (> 100%); "
            "check the units (seconds per step) and the GPU spec",
        )
    per_seq = max(0.0, float(sol[1])) if fit_per_seq else base.per_seq_overhead_s
    params = replace(
        base,
        step_overhead_s=overhead,
        per_seq_overhead_s=per_seq,
        bandwidth_efficiency=1.0 / inv_eff,
    )
    if prefill:
        unit_f = StepTimeModel(model, gpu, config, replace(params, flops_efficiency=1.0))
        effs: list[float] = []
        for q in prefill:
            t = q.prompt_tokens
            pairs = t * (t + 1) // 2
            compute_at_peak = (
                unit_f._flop_linear * t + unit_f._flop_head + unit_f._flop_attn * pairs
            )
            rest = q.seconds - overhead - per_seq - unit_f.comm_time(t)
            if rest <= 0:
                raise ConfigError(
                    "prefill", f"prefill of {t} tokens ({q.seconds}s) is faster than the overhead"
                )
            effs.append(compute_at_peak / rest)
        eff = sum(effs) / len(effs)
        if not 0.0 < eff <= 1.0:
            raise ConfigError(
                "prefill", f"measurements imply {eff:.0%} of peak FLOP/s; check units and GPU spec"
            )
        params = replace(params, flops_efficiency=eff)
    return params


# -- a measured profile table ----------------------------------------------------


def _interp(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise-linear through (xs, ys), extended linearly past both ends."""
    n = len(xs)
    if n == 1:
        return ys[0]
    i = 1
    while i < n - 1 and x > xs[i]:
        i += 1
    x0, x1 = xs[i - 1], xs[i]
    y0, y1 = ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


class ProfileTableModel(StepTimeModel):
    """Step times read from a measured profile table instead of the roofline.

    The table is a rectilinear grid of measured step times over
    (num_tokens, kv_read_tokens): every combination of the listed token
    counts and cached-context sizes, e.g. from timing a vLLM instance at
    fixed shapes (decode batches of n sequences holding C cached tokens,
    prefill chunks of t tokens after p cached ones). A step's time is the
    bilinear interpolation of the table at (num_tokens, kv_read_tokens),
    extended linearly past its edges; the other shape fields (sequences,
    attention pairs) are what the table measured implicitly. Decode runs
    keep a closed form: at fixed n the time is piecewise linear in the
    context, so `decode_run_time` sums an arithmetic series per grid cell.

    It is a StepTimeModel (the memory model and the Scheduler's typing are
    unchanged); `StepTimeModel` is the other implementation of the same
    interface (step_time_raw, decode_step_time, decode_run_time,
    steps_within, prefill_time).
    """

    __slots__ = ("_kv", "_rows", "_tokens")

    def __init__(
        self,
        model: ModelSpec,
        gpu: GPUSpec,
        config: EngineConfig,
        rows: list[tuple[int, int, float]],
        params: StepTimeParams | None = None,
    ) -> None:
        super().__init__(model, gpu, config, params)
        tokens = sorted({r[0] for r in rows})
        kv = sorted({r[1] for r in rows})
        grid: dict[tuple[int, int], float] = {}
        for t, c, sec in rows:
            if t <= 0 or c < 0 or not sec > 0.0:
                raise ConfigError(
                    "profile", f"bad row ({t}, {c}, {sec}): need tokens > 0, kv >= 0, seconds > 0"
                )
            grid[(t, c)] = sec
        missing = [(t, c) for t in tokens for c in kv if (t, c) not in grid]
        if missing:
            raise ConfigError(
                "profile",
                f"the table must be a full grid over num_tokens x kv_read_tokens; "
                f"missing {missing[0]} (and {len(missing) - 1} more)",
            )
        self._tokens = [float(t) for t in tokens]
        self._kv = [float(c) for c in kv]
        # _rows[i]: step seconds along kv for tokens[i]
        self._rows = [[grid[(t, c)] for c in kv] for t in tokens]

    def _row_at(self, num_tokens: int) -> list[float]:
        """Seconds along the kv grid at num_tokens (linear in tokens between rows)."""
        ts = self._tokens
        if len(ts) == 1:
            return self._rows[0]
        x = float(num_tokens)
        i = 1
        while i < len(ts) - 1 and x > ts[i]:
            i += 1
        w = (x - ts[i - 1]) / (ts[i] - ts[i - 1])
        a = self._rows[i - 1]
        b = self._rows[i]
        return [a[j] + (b[j] - a[j]) * w for j in range(len(a))]

    def step_time_raw(
        self, num_tokens: int, num_seqs: int, kv_read_tokens: int, attention_pairs: int
    ) -> float:
        if num_tokens <= 0:
            return 0.0
        t = _interp(self._kv, self._row_at(num_tokens), float(kv_read_tokens))
        return t if t > 0.0 else 0.0

    def decode_step_time(self, num_seqs: int, total_context_tokens: int) -> float:
        return self.step_time_raw(num_seqs, num_seqs, total_context_tokens, 0)

    def decode_run_time(self, num_seqs: int, total_context_tokens: int, k: int) -> float:
        """Sum of k decode steps: context C + j n at step j, piecewise linear in it."""
        if k <= 0 or num_seqs <= 0:
            return 0.0
        ys = self._row_at(num_seqs)
        xs = self._kv
        n = float(num_seqs)
        c0 = float(total_context_tokens)
        total = 0.0
        j = 0
        while j < k:
            x = c0 + j * n
            # the linear piece holding x and the last step j_end (exclusive) on it
            i = 1
            while i < len(xs) - 1 and x > xs[i]:
                i += 1
            if len(xs) == 1:
                slope = 0.0
                y0 = ys[0]
                x0 = x
                j_end = k
            else:
                x0, x1 = xs[i - 1], xs[i]
                y0 = ys[i - 1]
                slope = (ys[i] - y0) / (x1 - x0)
                if i < len(xs) - 1:
                    # steps with c0 + j n <= x1 stay on this piece
                    j_end = min(k, math.floor((x1 - c0) / n) + 1)
                    if j_end <= j:
                        j_end = j + 1
                else:
                    j_end = k
            cnt = j_end - j
            # sum over jj in [j, j_end) of y0 + slope (c0 + jj n - x0)
            sum_j = (j + j_end - 1) * cnt / 2.0
            total += cnt * (y0 + slope * (c0 - x0)) + slope * n * sum_j
            j = j_end
        return total

    def with_params(self, params: StepTimeParams) -> StepTimeModel:
        rows = [
            (int(t), int(c), self._rows[i][j])
            for i, t in enumerate(self._tokens)
            for j, c in enumerate(self._kv)
        ]
        return ProfileTableModel(self.model, self.gpu, self.config, rows, params)


def load_profile_table(path: str) -> list[tuple[int, int, float]]:
    """Rows of a profile CSV: num_tokens, kv_read_tokens, seconds (header required)."""
    import csv
    from pathlib import Path

    try:
        with Path(path).open(encoding="utf-8") as f:
            reader = csv.DictReader(f)
            need = {"num_tokens", "kv_read_tokens", "seconds"}
            if reader.fieldnames is None or not need <= set(reader.fieldnames):
                raise ConfigError("profile", f"{path}: need the columns {sorted(need)}")
            return [
                (int(r["num_tokens"]), int(r["kv_read_tokens"]), float(r["seconds"]))
                for r in reader
            ]
    except OSError as e:
        raise ConfigError("profile", f"cannot read {path}: {e}") from e
    except ValueError as e:
        raise ConfigError("profile", f"{path}: {e}") from e
