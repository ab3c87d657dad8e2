"""KV capacity as vLLM computes it, and the configs vLLM refuses."""

from __future__ import annotations

import pytest

from dualpool.engine import (
    EngineConfig,
    get_gpu,
    get_model,
    kv_bytes_per_token,
    plan_memory,
    smallest_feasible_tp,
)
from dualpool.errors import ConfigError, InfeasibleConfigError

GiB = 1 << 30
PAPER_LONG = EngineConfig(
    tensor_parallel_size=2, max_model_len=65536, max_num_seqs=16, max_num_batched_tokens=8192
)


def test_kv_bytes_per_token_paper_figure() -> None:
    m = get_model("llama-3-70b")
    assert kv_bytes_per_token(m, EngineConfig()) == 327_680  # 2 x 80 x 8 x 128 x 2
    assert kv_bytes_per_token(m, EngineConfig(tensor_parallel_size=2)) == 163_840
    assert kv_bytes_per_token(m, EngineConfig(kv_cache_dtype="fp8")) == 163_840


def test_kv_heads_replicated_beyond_kv_head_count() -> None:
    m = get_model("qwen3-235b-a22b")  # 4 KV heads
    at4 = kv_bytes_per_token(m, EngineConfig(tensor_parallel_size=4))
    at8 = kv_bytes_per_token(m, EngineConfig(tensor_parallel_size=8))
    assert at4 == at8 == 2 * 94 * 1 * 128 * 2


def test_llama3_8b_matches_vllm_profile_log() -> None:
    # vllm PR #10511: weights 14.96 GiB, activation peak 1.26 GiB, TP 1.
    plan = plan_memory(get_model("llama-3.1-8b"), get_gpu("h100-80gb"), EngineConfig())
    assert plan.weight_bytes / GiB == pytest.approx(14.96, abs=0.01)
    assert plan.activation_bytes / GiB == pytest.approx(1.26, abs=0.05)
    assert plan.num_gpu_blocks == plan.kv_cache_bytes // (16 * 131_072)


def test_70b_bf16_on_one_a100_weights_do_not_fit() -> None:
    cfg = EngineConfig(max_model_len=8192)
    with pytest.raises(InfeasibleConfigError, match=r"short by 60\.\d\d GiB"):
        plan_memory(get_model("llama-3-70b"), get_gpu("a100-80gb"), cfg)


def test_paper_long_pool_tp2_cannot_hold_one_64k_sequence() -> None:
    with pytest.raises(InfeasibleConfigError) as e:
        plan_memory(get_model("llama-3-70b"), get_gpu("a100-80gb"), PAPER_LONG)
    msg = str(e.value)
    assert "max seq len (65536)" in msg
    assert "(10.00 GiB KV cache is needed" in msg
    assert "estimated maximum model length is" in msg


def test_smallest_feasible_tp() -> None:
    m, g = get_model("llama-3-70b"), get_gpu("a100-80gb")
    assert smallest_feasible_tp(m, g, PAPER_LONG) == 4
    assert smallest_feasible_tp(get_model("llama-3.1-8b"), g, EngineConfig()) == 1
    with pytest.raises(InfeasibleConfigError, match="no tensor_parallel_size"):
        smallest_feasible_tp(m, get_gpu("rtx-pro-6000"), PAPER_LONG, candidates=(1,))


def test_tp_must_divide_heads() -> None:
    with pytest.raises(InfeasibleConfigError, match="divisible by tensor parallel size"):
        plan_memory(
            get_model("qwen3-235b-a22b"),
            get_gpu("mi300x"),
            EngineConfig(tensor_parallel_size=128, max_num_batched_tokens=8192),
        )


def test_unchecked_plan_reports_the_deficit() -> None:
    plan = plan_memory(get_model("llama-3-70b"), get_gpu("a100-80gb"), PAPER_LONG, check=False)
    assert plan.num_gpu_blocks < plan.blocks_per_max_len_seq


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tensor_parallel_size": 3}, "tensor_parallel_size"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"kv_cache_dtype": "int4"}, "kv_cache_dtype"),
        ({"max_num_seqs": 512, "max_num_batched_tokens": 256}, "max_num_batched_tokens"),
        ({"enable_chunked_prefill": False, "max_model_len": 32768}, "max_num_batched_tokens"),
        ({"block_size": -16}, "block_size"),
    ],
)
def test_engine_config_errors_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as e:
        EngineConfig(**kwargs)  # type: ignore[arg-type]
    assert e.value.field == field


def test_report_runs_and_prints_the_doc_figures(capsys: pytest.CaptureFixture[str]) -> None:
    from dualpool.engine import report

    report.main([])
    out = capsys.readouterr().out
    assert "smallest feasible TP for long 64K/16: 4" in out
    assert "16 sequences x 65,536 tokens need 160.0 GiB per GPU at TP2" in out


def test_rtx4090_matches_vllm_019_logged_blocks() -> None:
    # shared/data/vllm-runs/README.md: vLLM 0.19, Llama-3.1-8B BF16, RTX 4090,
    # gpu_memory_utilization 0.9, max_num_seqs 128, max_num_batched_tokens 2048,
    # max_model_len 32768: num_gpu_blocks 2,588 (41,408 tokens), and it started.
    cfg = EngineConfig(max_model_len=32768, max_num_seqs=128, max_num_batched_tokens=2048)
    plan = plan_memory(get_model("llama-3.1-8b"), get_gpu("rtx-4090"), cfg)
    assert plan.num_gpu_blocks == pytest.approx(2588, rel=0.03)
    assert plan.kv_cache_tokens >= 32768  # max_model_len 32768 is accepted


def test_cuda_graph_pool_counts_only_when_profiled() -> None:
    from dualpool.engine import MemoryParams

    m, g, cfg = get_model("llama-3.1-8b"), get_gpu("h100-80gb"), EngineConfig()
    off = plan_memory(m, g, cfg)
    on = plan_memory(m, g, cfg, MemoryParams(profile_cuda_graphs=True))
    assert off.kv_cache_bytes - on.kv_cache_bytes == MemoryParams().cuda_graph_bytes
