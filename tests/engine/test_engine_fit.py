"""fit_step_params: recovers a run the step-time model can explain; never worse than its start."""

from __future__ import annotations

import random

import pytest
from test_engine_fidelity import RUNS

from dualpool.engine import Catalog, StepTimeParams, get_gpu, get_model
from dualpool.engine.measured import (
    MeasuredRequest,
    MeasuredRun,
    engine_config,
    find_runs,
    fit_step_params,
    replay,
    resolve_specs,
)


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
