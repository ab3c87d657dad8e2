"""Catalog figures, HF config.json parsing and YAML additions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualpool.engine import BUILTIN_GPUS, Catalog, get_gpu, get_model, model_from_hf_config
from dualpool.errors import CatalogError

# Published parameter counts (model cards), billions.
PUBLISHED = {
    "llama-3.1-8b": (8.03, 8.03),
    "llama-3-70b": (70.6, 70.6),
    "qwen3-32b": (32.8, 32.8),
    "qwen3-235b-a22b": (235.0, 22.0),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_derived_params_match_model_cards(name: str) -> None:
    m = get_model(name)
    total, active = PUBLISHED[name]
    assert m.num_params / 1e9 == pytest.approx(total, rel=0.01)
    assert m.num_active_params / 1e9 == pytest.approx(active, rel=0.02)


def test_required_gpus_and_paper_prices() -> None:
    assert set(BUILTIN_GPUS) >= {"a100-80gb", "h100-80gb", "h200", "mi300x", "rtx-pro-6000"}
    assert get_gpu("a100-80gb").price_per_hour == 2.21
    assert get_gpu("mi300x").price_per_hour == 3.67
    assert get_gpu("a100-80gb").fp8_flops == 0.0


def test_fp8_weights_halve_linear_layers_only() -> None:
    bf16 = get_model("qwen3-235b-a22b")
    fp8 = get_model("qwen3-235b-a22b", weight_dtype="fp8")
    assert fp8.weight_dtype == "fp8"
    linear = bf16.num_params - bf16.num_embedding_params
    assert bf16.weight_bytes - fp8.weight_bytes == linear


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(CatalogError, match="llama-3-70b"):
        get_model("llama-4")
    with pytest.raises(CatalogError, match="unknown GPU 'b200'"):
        get_gpu("b200")


QWEN3_MOE_CONFIG = {
    "_name_or_path": "Qwen/Qwen3-30B-A3B",
    "model_type": "qwen3_moe",
    "hidden_size": 2048,
    "num_hidden_layers": 48,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "intermediate_size": 6144,
    "moe_intermediate_size": 768,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def test_hf_config_qwen3_moe(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(QWEN3_MOE_CONFIG))
    m = model_from_hf_config(path)
    assert m.name == "qwen3-30b-a3b"
    assert m.num_params / 1e9 == pytest.approx(30.5, rel=0.01)  # model card: 30.5B
    assert m.num_active_params / 1e9 == pytest.approx(3.3, rel=0.03)  # 3.3B activated
    assert m.is_moe and m.num_kv_heads == 4


def test_hf_config_llama_defaults_head_dim_and_reads_fp8() -> None:
    cfg = {
        "model_type": "llama",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "quantization_config": {"quant_method": "fp8"},
    }
    m = model_from_hf_config(cfg, name="llama-fp8")
    assert m.head_dim == 128
    assert m.weight_dtype == "fp8"
    assert m.num_params == get_model("llama-3.1-8b").num_params


def test_hf_config_missing_key_names_it() -> None:
    with pytest.raises(CatalogError, match="num_hidden_layers"):
        model_from_hf_config({"hidden_size": 8, "num_attention_heads": 2, "vocab_size": 10})


def test_yaml_adds_models_and_gpus(tmp_path: Path) -> None:
    (tmp_path / "moe.json").write_text(json.dumps(QWEN3_MOE_CONFIG))
    (tmp_path / "cat.yaml").write_text(
        """
models:
  qwen3-30b-a3b-fp8:
    hf_config: moe.json
    weight_dtype: fp8
  tiny:
    num_layers: 2
    hidden_size: 64
    num_attention_heads: 4
    num_kv_heads: 2
    intermediate_size: 128
    vocab_size: 1000
    max_position_embeddings: 2048
gpus:
  my-gpu:
    memory_gib: 24
    hbm_bandwidth_gbps: 1000
    bf16_tflops: 150
    interconnect_gbps: 32
    price_per_hour: 0.5
"""
    )
    cat = Catalog().load_yaml(tmp_path / "cat.yaml")
    assert cat.model("qwen3-30b-a3b-fp8").weight_dtype == "fp8"
    assert cat.model("tiny").head_dim == 16
    assert cat.gpu("my-gpu").memory_gib == pytest.approx(24)
    assert cat.model("llama-3.1-8b") is get_model("llama-3.1-8b")


def test_yaml_errors_name_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("gpus:\n  g:\n    memory_gib: 24\n")
    with pytest.raises(CatalogError, match=r"bad\.yaml: gpus\.g: missing key 'hbm_bandwidth_gbps'"):
        Catalog().load_yaml(bad)
    bad.write_text("gpus:\n  g:\n    memroy_gib: 24\n")
    with pytest.raises(CatalogError, match="unknown keys"):
        Catalog().load_yaml(bad)
