"""Measured runs, their replay, the profile-table predictor and the all-reduce model."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpool.engine import (
    AllReduceModel,
    Catalog,
    EngineConfig,
    StepTimeModel,
    StepTimeParams,
    get_gpu,
    get_model,
)
from dualpool.engine.measured import (
    MeasuredRequest,
    MeasuredRun,
    compare,
    engine_config,
    find_runs,
    kv_held_blocks,
    kv_running_sets,
    load_bench_json,
    percentile,
    replay,
    resolve_specs,
)
from dualpool.engine.timing import ProfileTableModel
from dualpool.errors import CatalogError, ConfigError

RUNS = Path(os.environ.get("DUALPOOL_SHARED_DATA", "/work/shared/data")) / "vllm-runs"


def write_run(folder: Path, stem: str, model: str = "meta-llama/Llama-3.1-8B") -> None:
    meta = {
        "model": model,
        "vllm_version": "0.19.0",
        "engine_kwargs": {"max_num_seqs": 8, "max_num_batched_tokens": 512, "max_model_len": 4096},
    }
    (folder / f"{stem}_meta.json").write_text(json.dumps(meta))
    lines = []
    for i in range(6):
        q = 100.0 + i * 0.5
        lines.append(
            json.dumps(
                {
                    "input_toks": 100 + 10 * i,
                    "output_toks": 20,
                    "queued_ts": q,
                    "first_token_ts": q + 0.05,
                    "last_token_ts": q + 0.05 + 19 * 0.01,
                }
            )
        )
    (folder / f"{stem}_requests.jsonl").write_text("\n".join(lines) + "\n")


def test_run_folder_loads_and_replays(tmp_path: Path) -> None:
    write_run(tmp_path, "h100_llama31_8b")
    (run,) = find_runs(tmp_path)
    assert run.requests[0].arrival == 0.0 and run.requests[1].arrival == 0.5
    assert run.requests[0].tpot == pytest.approx(0.01)
    model, gpu = resolve_specs(run, Catalog())
    assert (model.name, gpu.name) == ("llama-3.1-8b", "h100-80gb")
    cfg = engine_config(run, model)
    assert (cfg.max_num_seqs, cfg.max_num_batched_tokens, cfg.max_model_len) == (8, 512, 4096)
    res = replay(run, model, gpu, cfg)
    assert len(res.ttft) == 6 and all(t > 0 for t in res.ttft)
    err = compare(run, res)
    assert set(err) == {"ttft_p50", "ttft_p90", "e2e_p50", "e2e_p90", "tpot_p50", "tpot_p90"}


def test_unknown_gpu_or_model_asks_for_a_catalog(tmp_path: Path) -> None:
    write_run(tmp_path, "b300_llama31_8b")
    (run,) = find_runs(tmp_path)
    with pytest.raises(CatalogError, match="--catalog FILE"):
        resolve_specs(run, Catalog())
    write_run(tmp_path, "h100_other", model="acme/Unknown-7B")
    run2 = next(r for r in find_runs(tmp_path) if r.name == "h100_other")
    with pytest.raises(CatalogError, match="--catalog FILE"):
        resolve_specs(run2, Catalog())


def test_bench_json_format(tmp_path: Path) -> None:
    data = {
        "model_id": "meta-llama/Llama-3.1-8B",
        "request_rate": 2.0,
        "input_lens": [100, 200, 300],
        "output_lens": [10, 0, 5],
        "ttfts": [0.05, 0.0, 0.07],
        "itls": [[0.01] * 9, [], [0.02] * 4],
    }
    p = tmp_path / "bench.json"
    p.write_text(json.dumps(data))
    run = load_bench_json(p)
    assert len(run.requests) == 2  # the failed request (0 tokens) is dropped
    assert run.requests[1].arrival == pytest.approx(1.0)  # index 2 at 2 req/s
    assert run.requests[0].e2e == pytest.approx(0.05 + 0.09)
    p.write_text(json.dumps({"input_lens": [1]}))
    with pytest.raises(ConfigError, match="save-detailed"):
        load_bench_json(p)


def test_percentile_matches_numpy_linear() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 90) == 5.0
    assert math.isnan(percentile([], 50))


@pytest.mark.skipif(not RUNS.exists(), reason="shared/data/vllm-runs not available")
def test_shared_runs_kv_capacity_and_fidelity() -> None:
    runs = {r.name: r for r in find_runs(RUNS)}
    r = runs["rtx4090_llama31_8b_seqs128"]
    assert r.num_gpu_blocks == 2588  # from the README
    model, gpu = resolve_specs(r, Catalog())
    res = replay(r, model, gpu, engine_config(r, model))
    assert res.num_gpu_blocks == pytest.approx(2588, rel=0.03)
    err = compare(r, res)
    assert abs(err["tpot_p50"]) < 0.10 and abs(err["ttft_p50"]) < 0.10
    p = runs["rtxpro6000_llama31_8b"]
    model, gpu = resolve_specs(p, Catalog())
    errp = compare(p, replay(p, model, gpu, engine_config(p, model)))
    assert max(abs(v) for v in errp.values()) < 0.10


def test_run_halves_split_at_the_middle() -> None:
    reqs = tuple(MeasuredRequest(float(i), 10, 5, 0.1, 0.2) for i in range(10))
    a, b = MeasuredRun("x", reqs, {}, {}).halves()
    assert len(a.requests) == len(b.requests) == 5 and b.requests[0].arrival == 0.0


def test_kv_running_sets_are_the_oldest_alive_while_kv_binds() -> None:
    # Five requests arrive at 0..0.4 s; request 1 finishes first (at 5.5 s).
    # vLLM's running count falls 4 -> 3 -> 2 while one waits: from t = 2 the
    # running set is the oldest `running` requests alive, until the first
    # completion.
    reqs = (
        MeasuredRequest(0.0, 160, 100, 0.5, 9.0),
        MeasuredRequest(0.1, 32, 10, 0.5, 5.4),
        MeasuredRequest(0.2, 48, 100, 0.5, 9.0),
        MeasuredRequest(0.3, 16, 100, 0.5, 9.0),
        MeasuredRequest(0.4, 16, 100, 4.0, 9.0),
    )
    series = ((1.0, 4, 1), (2.0, 3, 2), (3.0, 2, 3), (4.0, 2, 3), (5.0, 2, 3), (6.0, 3, 1))
    run = MeasuredRun("x", reqs, {}, {}, series)
    sets = kv_running_sets(run)
    assert sets == [(2.0, 3, (0, 1, 2)), (3.0, 2, (0, 1)), (4.0, 2, (0, 1)), (5.0, 2, (0, 1))]
    held = kv_held_blocks(run, 16)
    assert [(t, n) for t, n, _ in held] == [(t, n) for t, n, _ in sets]
    # at t = 2: request 0 holds ceil((160 + 1 + 1.5 / tpot) / 16) blocks, etc.
    t, _, blocks = held[0]
    want = sum(
        math.ceil(
            (reqs[i].input_tokens + 1 + (t - reqs[i].arrival - reqs[i].ttft) / reqs[i].tpot) / 16
        )
        for i in (0, 1, 2)
    )
    assert blocks == want
    assert kv_running_sets(MeasuredRun("x", reqs, {}, {})) == []


# -- all-reduce --------------------------------------------------------------------


def test_allreduce_pcie_uses_nccl_and_nvlink_the_custom_kernel() -> None:
    p = StepTimeParams()
    nv = AllReduceModel(get_gpu("h100-80gb"), 4, p)
    pcie = AllReduceModel(get_gpu("rtx-pro-6000"), 4, p)
    small = 8 * 4096 * 2  # a decode batch of 8 rows
    assert nv.time(small) == pytest.approx(p.allreduce_latency_s + 1.5 * small / (450e9 * 0.7))
    assert pcie.time(small) == pytest.approx(p.nccl_latency_s + 1.5 * small / (64e9 * 0.7))
    big = 16 * 1024 * 1024  # beyond the custom all-reduce's 8 MiB: NCCL on NVLink too
    assert nv.time(big) == pytest.approx(p.nccl_latency_s + 1.5 * big / (450e9 * 0.7))
    assert AllReduceModel(get_gpu("h100-80gb"), 1, p).time(big) == 0.0


def test_tp_over_pcie_costs_more_per_step() -> None:
    m = get_model("llama-3-70b")
    cfg = EngineConfig(tensor_parallel_size=4)
    nv = StepTimeModel(m, get_gpu("h100-80gb"), cfg)
    pcie_gpu = dataclasses.replace(
        get_gpu("h100-80gb"), name="h100-pcie", interconnect_bandwidth=64e9, link="pcie"
    )
    pc = StepTimeModel(m, pcie_gpu, cfg)
    assert pc.comm_time(64) > 3 * nv.comm_time(64)
    assert pc.decode_step_time(64, 64_000) > nv.decode_step_time(64, 64_000)


# -- the profile-table predictor ----------------------------------------------------


def table_from(model: StepTimeModel, tokens: list[int], kv: list[int]) -> ProfileTableModel:
    rows = [(t, c, model.step_time_raw(t, t, c, c + t)) for t in tokens for c in kv]
    return ProfileTableModel(model.model, model.gpu, model.config, rows)


def test_profile_table_reproduces_its_grid_points() -> None:
    base = StepTimeModel(get_model("llama-3.1-8b"), get_gpu("h100-80gb"), EngineConfig())
    tab = table_from(base, [1, 16, 64, 256], [0, 16_000, 64_000, 256_000])
    for t in (1, 16, 64, 256):
        for c in (0, 16_000, 64_000, 256_000):
            assert tab.step_time_raw(t, t, c, 0) == pytest.approx(
                base.step_time_raw(t, t, c, c + t)
            )
    # between grid points: interpolated, between the neighbours
    mid = tab.step_time_raw(32, 32, 40_000, 0)
    assert tab.step_time_raw(16, 16, 16_000, 0) < mid < tab.step_time_raw(64, 64, 64_000, 0)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    ctx=st.integers(0, 300_000),
    k=st.integers(1, 3000),
)
def test_profile_table_decode_run_is_the_sum_of_its_steps(n: int, ctx: int, k: int) -> None:
    base = StepTimeModel(get_model("llama-3.1-8b"), get_gpu("h100-80gb"), EngineConfig())
    tab = table_from(base, [1, 32, 128, 512], [0, 8_000, 64_000, 200_000])
    steps = sum(tab.decode_step_time(n, ctx + j * n) for j in range(k))
    assert tab.decode_run_time(n, ctx, k) == pytest.approx(steps, rel=1e-9)
    budget = steps * 0.6
    m = tab.steps_within(n, ctx, budget)
    assert tab.decode_run_time(n, ctx, m) <= budget < tab.decode_run_time(n, ctx, m + 1)


def test_profile_table_must_be_a_grid() -> None:
    base = StepTimeModel(get_model("llama-3.1-8b"), get_gpu("h100-80gb"), EngineConfig())
    with pytest.raises(ConfigError, match="full grid"):
        ProfileTableModel(base.model, base.gpu, base.config, [(1, 0, 0.01), (2, 10, 0.02)])
