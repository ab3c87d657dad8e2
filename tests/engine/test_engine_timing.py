"""Step-time roofline, decode-run closed forms and calibration."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpool.engine import (
    DecodePoint,
    EngineConfig,
    PrefillPoint,
    StepTimeModel,
    StepTimeParams,
    calibrate,
    get_gpu,
    get_model,
)
from dualpool.errors import ConfigError

MODELS = [
    StepTimeModel(get_model("llama-3.1-8b"), get_gpu("h100-80gb"), EngineConfig()),
    StepTimeModel(
        get_model("llama-3-70b"), get_gpu("a100-80gb"), EngineConfig(tensor_parallel_size=4)
    ),
    StepTimeModel(
        get_model("qwen3-235b-a22b", "fp8"),
        get_gpu("mi300x"),
        EngineConfig(tensor_parallel_size=4),
    ),
    # A slow-compute GPU so that decode runs cross from memory- to compute-bound.
    StepTimeModel(
        get_model("llama-3.1-8b"),
        get_gpu("rtx-pro-6000"),
        EngineConfig(),
        StepTimeParams(flops_efficiency=0.02),
    ),
]


@settings(max_examples=200, deadline=None)
@given(
    which=st.integers(0, len(MODELS) - 1),
    n=st.integers(1, 300),
    ctx=st.integers(0, 2_000_000),
    k=st.integers(0, 400),
)
def test_decode_run_time_is_the_sum_of_steps(which: int, n: int, ctx: int, k: int) -> None:
    t = MODELS[which]
    stepwise = sum(t.decode_step_time(n, ctx + j * n) for j in range(k))
    assert t.decode_run_time(n, ctx, k) == pytest.approx(stepwise, rel=1e-9, abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(
    which=st.integers(0, len(MODELS) - 1),
    n=st.integers(1, 300),
    ctx=st.integers(0, 2_000_000),
    budget=st.floats(0.0, 30.0),
)
def test_steps_within_is_the_largest_fitting_k(which: int, n: int, ctx: int, budget: float) -> None:
    t = MODELS[which]
    k = t.steps_within(n, ctx, budget)
    assert t.decode_run_time(n, ctx, k) <= budget
    assert t.decode_run_time(n, ctx, k + 1) > budget
    for limit in (1, 2, k // 2 + 1, k, k + 1):
        assert t.steps_within(n, ctx, budget, limit=limit) == min(k, limit)


def test_crossover_happens_in_the_slow_model() -> None:
    t = MODELS[3]
    # Decode at batch 256 with long contexts: compute-bound at the end only.
    first = t.decode_step_time(256, 0)
    last = t.decode_step_time(256, 256 * 4000)
    assert last > first
    assert t.decode_run_time(256, 0, 4000) == pytest.approx(
        sum(t.decode_step_time(256, 256 * j) for j in range(4000)), rel=1e-9
    )


def test_decode_is_weight_bound_at_batch_one() -> None:
    t = MODELS[0]
    p = t.params
    m = get_model("llama-3.1-8b")
    # Every weight but the input embedding table (indexed, not streamed).
    streamed = m.weight_bytes - m.vocab_size * m.hidden_size * 2
    weights = streamed / (3350e9 * t.bandwidth_efficiency)
    assert t.decode_step_time(1, 0) == pytest.approx(
        weights + p.step_overhead_s + p.per_seq_overhead_s, rel=1e-3
    )


def test_tensor_parallel_adds_communication() -> None:
    m, g = get_model("llama-3-70b"), get_gpu("a100-80gb")
    t2 = StepTimeModel(m, g, EngineConfig(tensor_parallel_size=2))
    t4 = StepTimeModel(m, g, EngineConfig(tensor_parallel_size=4))
    assert t4.decode_step_time(1, 0) < t2.decode_step_time(1, 0)  # half the weights each
    assert t4.prefill_time(8192) < t2.prefill_time(8192)


def test_moe_reads_more_experts_at_larger_batch() -> None:
    t = MODELS[2]
    assert t.weight_read_time(64) > 5 * t.weight_read_time(1)


def test_calibrate_recovers_synthetic_params() -> None:
    m, g, c = get_model("llama-3.1-8b"), get_gpu("h100-80gb"), EngineConfig()
    truth = StepTimeParams(
        bandwidth_efficiency=0.71,
        step_overhead_s=0.0031,
        per_seq_overhead_s=3e-5,
        flops_efficiency=0.42,
    )
    t = StepTimeModel(m, g, c, truth)
    shapes = [(1, 0), (1, 60_000), (32, 32_000), (64, 6_400), (64, 192_000)]
    decode = [DecodePoint(n, c, t.decode_step_time(n, c)) for n, c in shapes]
    prefill = [PrefillPoint(16384, t.prefill_time(16384))]
    fit = calibrate(m, g, c, decode, prefill)
    assert fit.bandwidth_efficiency == pytest.approx(0.71, rel=1e-6)
    assert fit.step_overhead_s == pytest.approx(0.0031, rel=1e-6)
    assert fit.per_seq_overhead_s == pytest.approx(3e-5, rel=1e-4)
    assert fit.flops_efficiency == pytest.approx(0.42, rel=1e-6)


def test_calibrate_rejects_impossible_numbers() -> None:
    m, g, c = get_model("llama-3.1-8b"), get_gpu("h100-80gb"), EngineConfig()
    with pytest.raises(ConfigError, match="bandwidth"):
        calibrate(m, g, c, [DecodePoint(1, 0, 0.0011), DecodePoint(64, 64_000, 0.0012)])
    with pytest.raises(ConfigError, match="vary the cached context"):
        calibrate(m, g, c, [DecodePoint(1, 0, 0.008), DecodePoint(64, 0, 0.009)])


def test_params_validate() -> None:
    with pytest.raises(ConfigError) as e:
        StepTimeParams(flops_efficiency=0.0)
    assert e.value.field == "flops_efficiency"
