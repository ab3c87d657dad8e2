"""fit_step_params: recovers a run the model can explain (step time; the KV capacity of a
KV-bound run); never worse than its start."""

from __future__ import annotations

import dataclasses
import random

import pytest
from test_engine_fidelity import RUNS

from dualpool.engine import (
    Catalog,
    EngineConfig,
    MemoryParams,
    StepTimeParams,
    get_gpu,
    get_model,
    plan_memory,
)
from dualpool.engine.measured import (
    MeasuredRequest,
    MeasuredRun,
    engine_config,
    find_runs,
    fit_step_params,
    replay,
    resolve_specs,
)
from dualpool.engine.memory import GiB, non_torch_for_blocks


def synthetic_run(truth: StepTimeParams, rate: float, n: int = 120) -> MeasuredRun:
    """A 'measured' run produced by the model itself with parameters `truth`."""
    rng = random.Random(7)
    t = 0.0
    reqs = []
    for _ in range(n):
        t += rng.expovariate(rate)
        reqs.append(MeasuredRequest(t, rng.randint(50, 1500), rng.randint(20, 300), 0.0, 0.0))
    kw = {"max_num_seqs": 32, "max_num_batched_tokens": 2048, "max_model_len": 8192}
    draft = MeasuredRun("h100_llama31_8b", tuple(reqs), kw, {"model": "meta-llama/Llama-3.1-8B"})
    model, gpu = get_model("llama-3.1-8b"), get_gpu("h100-80gb")
    res = replay(draft, model, gpu, engine_config(draft, model), truth)
    measured = tuple(
        MeasuredRequest(r.arrival, r.input_tokens, r.output_tokens, ttft, e2e)
        for r, ttft, e2e in zip(reqs, res.ttft, res.e2e, strict=True)
    )
    return MeasuredRun(draft.name, measured, kw, draft.meta)


@pytest.mark.parametrize("rate", [4.0, 12.0])
def test_fit_recovers_a_run_the_model_explains(rate: float) -> None:
    # Far from the defaults (H100: 0.55 flops, 0.8 bandwidth, 2 ms, 20 us); at
    # 12 req/s the 32-sequence cap queues requests, so TTFT includes waiting.
    truth = StepTimeParams(
        flops_efficiency=0.37, bandwidth_efficiency=0.63, step_overhead_s=0.0035,
        per_seq_overhead_s=3.3e-5,
    )  # fmt: skip
    run = synthetic_run(truth, rate)
    model, gpu = resolve_specs(run, Catalog())
    fit = fit_step_params(run, model, gpu, engine_config(run, model), max_replays=200)
    assert max(abs(v) for v in fit.before.values()) > 0.2
    assert fit.max_abs_error < 0.05


def test_fit_is_never_worse_than_its_start() -> None:
    run = synthetic_run(StepTimeParams(flops_efficiency=0.9, bandwidth_efficiency=0.95), 8.0, 60)
    model, gpu = resolve_specs(run, Catalog())
    cfg = engine_config(run, model)
    for budget in (1, 3, 9):
        fit = fit_step_params(run, model, gpu, cfg, max_replays=budget)
        worst_before = max(abs(v) for v in fit.before.values())
        assert fit.max_abs_error <= worst_before
        assert fit.replays <= budget


@pytest.mark.skipif(not RUNS.exists(), reason="shared/data/vllm-runs not available")
def test_fit_on_the_kv_bound_run_is_not_worse_than_the_defaults() -> None:
    run = next(r for r in find_runs(RUNS) if r.name == "rtx4090_llama31_8b_seqs128")
    model, gpu = resolve_specs(run, Catalog())
    n = len(run.requests)
    fit = fit_step_params(
        run, model, gpu, engine_config(run, model), max_replays=24, select=range(0, n // 2)
    )
    assert fit.max_abs_error <= max(abs(v) for v in fit.before.values())


# -- the KV capacity of a KV-bound run --------------------------------------------------

KV_TRUTH = int(0.3 * GiB)  # the model's default is 0.89 GiB: ~300 blocks fewer on a 4090


def kv_bound_run(non_torch: int, series: bool = True) -> tuple[MeasuredRun, int]:
    """A KV-bound run the model produced on an RTX 4090 with this non-torch memory.

    (80 requests at 12 req/s, prompts 300-2,000 tokens, outputs 300-900: the
    cache holds ~30 of them, so requests queue and the model preempts.) Its
    timeseries is the replay's own running/waiting count each second, as
    vLLM logs it; returns the run and the true capacity in blocks.
    """
    rng = random.Random(11)
    t = 0.0
    reqs = []
    for _ in range(80):
        t += rng.expovariate(12.0)
        reqs.append(MeasuredRequest(t, rng.randint(300, 2000), rng.randint(300, 900), 0.0, 0.0))
    kw = {"max_num_seqs": 128, "max_num_batched_tokens": 2048, "max_model_len": 32768}
    draft = MeasuredRun("rtx4090_llama31_8b", tuple(reqs), kw, {"model": "meta-llama/Llama-3.1-8B"})
    model, gpu = get_model("llama-3.1-8b"), get_gpu("rtx-4090")
    res = replay(
        draft, model, gpu, engine_config(draft, model),
        memory_params=MemoryParams(non_torch_bytes=non_torch),
    )  # fmt: skip
    assert res.num_preemptions > 0
    measured = tuple(
        MeasuredRequest(r.arrival, r.input_tokens, r.output_tokens, ttft, e2e)
        for r, ttft, e2e in zip(reqs, res.ttft, res.e2e, strict=True)
    )
    ts = tuple(res.timeseries) if series else ()
    return MeasuredRun(draft.name, measured, kw, draft.meta, ts), res.num_gpu_blocks


@pytest.mark.parametrize("series", [True, False])
def test_fit_recovers_the_kv_capacity_of_a_kv_bound_run(series: bool) -> None:
    run, truth = kv_bound_run(KV_TRUTH, series)
    model, gpu = resolve_specs(run, Catalog())
    cfg = engine_config(run, model)
    fit = fit_step_params(run, model, gpu, cfg, max_replays=80)
    assert fit.kv_bound and fit.start_blocks == plan_memory(model, gpu, cfg).num_gpu_blocks
    assert max(abs(v) for v in fit.before.values()) > 0.1  # the default capacity is off
    assert fit.non_torch_bytes is not None
    # fitted as the machine's non-torch memory; the capacity it implies:
    assert plan_memory(model, gpu, cfg, fit.memory_params).num_gpu_blocks == fit.fitted_blocks
    if series:  # from the stamps' estimate: exact here
        assert fit.held_blocks is not None and abs(fit.held_blocks / truth - 1) < 0.03
        assert abs(fit.fitted_blocks / truth - 1) < 0.01
        assert fit.max_abs_error < 0.02
    else:  # no timeseries: the search alone
        assert fit.held_blocks is None
        assert abs(fit.fitted_blocks / truth - 1) < 0.02
        assert fit.max_abs_error < 0.05


def test_kv_fit_is_never_worse_than_its_start() -> None:
    run, _ = kv_bound_run(KV_TRUTH)
    model, gpu = resolve_specs(run, Catalog())
    cfg = engine_config(run, model)
    for budget in (1, 2, 4):
        fit = fit_step_params(run, model, gpu, cfg, max_replays=budget)
        assert fit.max_abs_error <= max(abs(v) for v in fit.before.values())
        assert fit.replays <= budget
    # With a fixed capacity (num_gpu_blocks) or fit_kv=False only step time moves.
    assert (
        fit_step_params(run, model, gpu, cfg, max_replays=3, fit_kv=False).non_torch_bytes is None
    )
    fixed = fit_step_params(run, model, gpu, cfg, num_gpu_blocks=2700, max_replays=3)
    assert fixed.non_torch_bytes is None and fixed.fitted_blocks == 2700


def test_a_run_that_is_not_kv_bound_keeps_the_memory_account() -> None:
    run = synthetic_run(StepTimeParams(flops_efficiency=0.5), 4.0, 40)
    model, gpu = resolve_specs(run, Catalog())
    fit = fit_step_params(run, model, gpu, engine_config(run, model), max_replays=6)
    assert not fit.kv_bound and fit.non_torch_bytes is None and fit.held_blocks is None


def test_non_torch_for_blocks_inverts_the_account() -> None:
    model, gpu = get_model("llama-3.1-8b"), get_gpu("rtx-4090")
    cfg = EngineConfig(max_model_len=32768, max_num_seqs=128, max_num_batched_tokens=2048)
    for blocks in (2588, 2932, 3100):
        nt = non_torch_for_blocks(model, gpu, cfg, blocks)
        plan = plan_memory(model, gpu, cfg, MemoryParams(non_torch_bytes=nt))
        assert plan.num_gpu_blocks == blocks
    # The default account is untouched (vLLM's logged 2,588 on this machine).
    assert plan_memory(model, gpu, cfg).num_gpu_blocks == 2588
    # The GPU's own figure applies when the params leave it unset, an explicit one wins.
    g2 = dataclasses.replace(gpu, non_torch_bytes=non_torch_for_blocks(model, gpu, cfg, 2932))
    assert plan_memory(model, g2, cfg).num_gpu_blocks == 2932
    assert (
        plan_memory(model, g2, cfg, MemoryParams(non_torch_bytes=int(0.89 * GiB))).num_gpu_blocks
        == 2588
    )
