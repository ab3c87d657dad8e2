"""The built-in catalog of models and GPUs, and loaders for user additions.

Users extend the catalog with a YAML file::

    models:
      my-model:
        hf_config: path/to/config.json   # relative to the YAML file
        weight_dtype: fp8                 # optional
      my-other-model:                     # or every field spelled out
        num_layers: 32
        hidden_size: 4096
        num_attention_heads: 32
        num_kv_heads: 8
        intermediate_size: 14336
        vocab_size: 128256
        max_position_embeddings: 131072
    gpus:
      my-gpu:
        memory_gib: 79.2
        hbm_bandwidth_gbps: 3350      # GB/s (1e9 bytes/s)
        bf16_tflops: 989.5             # dense
        fp8_tflops: 1979
        interconnect_gbps: 450         # per direction
        price_per_hour: 2.99

A Hugging Face `config.json` is accepted as a model spec directly
(`model_from_hf_config`). This module is the only one in `dualpool.engine`
that reads files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from dualpool.engine.memory import gib_to_bytes
from dualpool.engine.specs import DTYPE_BYTES, GPUSpec, ModelSpec, WeightDType, count_params
from dualpool.errors import CatalogError, ConfigError

__all__ = [
    "BUILTIN_GPUS",
    "BUILTIN_MODELS",
    "Catalog",
    "get_gpu",
    "get_model",
    "model_from_hf_config",
]

GiB = 1 << 30
GB = 1e9
TFLOPS = 1e12


def _model(
    name: str,
    *,
    num_layers: int,
    hidden_size: int,
    num_attention_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    vocab_size: int,
    max_position_embeddings: int,
    head_dim: int | None = None,
    tie_word_embeddings: bool = False,
    num_experts: int = 0,
    num_experts_per_tok: int = 0,
    moe_intermediate_size: int = 0,
    qk_norm: bool = False,
    attention_bias: bool = False,
    weight_dtype: WeightDType = "bf16",
) -> ModelSpec:
    hd = head_dim if head_dim is not None else hidden_size // num_attention_heads
    total, active, embed = count_params(
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_attention_heads=num_attention_heads,
        num_kv_heads=num_kv_heads,
        head_dim=hd,
        intermediate_size=intermediate_size,
        vocab_size=vocab_size,
        tie_word_embeddings=tie_word_embeddings,
        num_experts=num_experts,
        num_experts_per_tok=num_experts_per_tok,
        moe_intermediate_size=moe_intermediate_size,
        qk_norm=qk_norm,
        attention_bias=attention_bias,
    )
    return ModelSpec(
        name=name,
        num_params=total,
        num_active_params=active,
        num_embedding_params=embed,
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_attention_heads=num_attention_heads,
        num_kv_heads=num_kv_heads,
        head_dim=hd,
        intermediate_size=intermediate_size,
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        weight_dtype=weight_dtype,
        num_experts=num_experts,
        num_experts_per_tok=num_experts_per_tok,
        moe_intermediate_size=moe_intermediate_size,
    )


# Every architecture figure below is copied from the model's Hugging Face
# config.json; the parameter counts are derived (count_params) and checked
# against the model card in tests/engine/test_catalog.py.
BUILTIN_MODELS: dict[str, ModelSpec] = {
    # huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json
    # (model card: 8.03B parameters)
    "llama-3.1-8b": _model(
        "llama-3.1-8b",
        num_layers=32,
        hidden_size=4096,
        num_attention_heads=32,
        num_kv_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
        max_position_embeddings=131072,
    ),
    # huggingface.co/meta-llama/Meta-Llama-3-70B/blob/main/config.json
    # (model card: 70.6B parameters). NOTE: Llama 3 (not 3.1) was trained for
    # 8,192 positions; vLLM refuses a larger max_model_len unless rope scaling
    # is configured or VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 is set.
    "llama-3-70b": _model(
        "llama-3-70b",
        num_layers=80,
        hidden_size=8192,
        num_attention_heads=64,
        num_kv_heads=8,
        intermediate_size=28672,
        vocab_size=128256,
        max_position_embeddings=8192,
    ),
    # huggingface.co/Qwen/Qwen3-32B/blob/main/config.json (model card: 32.8B);
    # head_dim 128 is explicit (64 heads x 128 = 8192 != hidden 5120).
    "qwen3-32b": _model(
        "qwen3-32b",
        num_layers=64,
        hidden_size=5120,
        num_attention_heads=64,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=25600,
        vocab_size=151936,
        max_position_embeddings=40960,
        qk_norm=True,
    ),
    # huggingface.co/Qwen/Qwen3-235B-A22B/blob/main/config.json
    # (model card: 235B total, 22B activated; 128 experts, 8 active).
    "qwen3-235b-a22b": _model(
        "qwen3-235b-a22b",
        num_layers=94,
        hidden_size=4096,
        num_attention_heads=64,
        num_kv_heads=4,
        head_dim=128,
        intermediate_size=12288,
        vocab_size=151936,
        max_position_embeddings=40960,
        num_experts=128,
        num_experts_per_tok=8,
        moe_intermediate_size=1536,
        qk_norm=True,
    ),
}

BUILTIN_GPUS: dict[str, GPUSpec] = {
    # NVIDIA A100 Tensor Core GPU datasheet (80GB SXM): HBM2e 2,039 GB/s,
    # BF16 312 TFLOPS dense (624 with sparsity), no FP8, NVLink 600 GB/s
    # (bidirectional, so 300 GB/s per direction). Memory: vLLM logs
    # "total_gpu_memory 79.22GiB" on an 80 GB card (vllm PR #10511).
    # Price: $2.21/h, the figure of the dual-pool paper.
    "a100-80gb": GPUSpec(
        name="a100-80gb",
        memory_bytes=int(79.22 * GiB),
        hbm_bandwidth=2039 * GB,
        bf16_flops=312 * TFLOPS,
        fp8_flops=0.0,
        interconnect_bandwidth=300 * GB,
        price_per_hour=2.21,
    ),
    # NVIDIA H100 Tensor Core GPU datasheet (SXM5 80GB): HBM3 3.35 TB/s,
    # BF16 989.5 TFLOPS dense (1,979 sparse), FP8 1,979 dense, NVLink 900 GB/s
    # bidirectional (450 per direction). Memory as for A100 (79.22 GiB visible).
    # Price: $2.99/h, middle of the "specialty cloud" on-demand band
    # $2.50-3.50 (mercatus-ai.com/blog/cloud-gpu-pricing, May 2026).
    "h100-80gb": GPUSpec(
        name="h100-80gb",
        memory_bytes=int(79.22 * GiB),
        hbm_bandwidth=3350 * GB,
        bf16_flops=989.5 * TFLOPS,
        fp8_flops=1979 * TFLOPS,
        interconnect_bandwidth=450 * GB,
        price_per_hour=2.99,
    ),
    # NVIDIA H200 datasheet (SXM): 141 GB HBM3e at 4.8 TB/s, same Hopper
    # tensor cores as H100, NVLink 900 GB/s. Visible memory taken as
    # 140 GiB (about 1% below nominal, as on 80 GB parts; approximate).
    # Price: $3.99/h, middle of the specialty band $3.50-4.50 (same source).
    "h200": GPUSpec(
        name="h200",
        memory_bytes=140 * GiB,
        hbm_bandwidth=4800 * GB,
        bf16_flops=989.5 * TFLOPS,
        fp8_flops=1979 * TFLOPS,
        interconnect_bandwidth=450 * GB,
        price_per_hour=3.99,
    ),
    # AMD Instinct MI300X datasheet: 192 GB HBM3 at 5.3 TB/s, BF16 1,307.4
    # TFLOPS dense, FP8 2,614.9 dense, Infinity Fabric 896 GB/s aggregate
    # peer bandwidth (7 links x 128 GB/s bidirectional: 448 per direction).
    # Price: $3.67/h, the figure of the dual-pool paper.
    "mi300x": GPUSpec(
        name="mi300x",
        memory_bytes=192 * GiB,
        hbm_bandwidth=5300 * GB,
        bf16_flops=1307.4 * TFLOPS,
        fp8_flops=2614.9 * TFLOPS,
        interconnect_bandwidth=448 * GB,
        price_per_hour=3.67,
    ),
    # NVIDIA RTX PRO 6000 Blackwell (Server Edition) product page: 96 GB
    # GDDR7, 1,792 GB/s (512-bit, 28 Gbps), "4,000 AI TOPS" (FP4 with
    # sparsity) -> dense FP8 ~1,000 and dense BF16 ~500 TFLOPS (derived by
    # halving per step; approximate). No NVLink: PCIe 5.0 x16, 64 GB/s per
    # direction. Price: $1.89/h is an assumption (no list price checked);
    # override it in YAML.
    "rtx-pro-6000": GPUSpec(
        name="rtx-pro-6000",
        memory_bytes=int(95.5 * GiB),
        hbm_bandwidth=1792 * GB,
        bf16_flops=500 * TFLOPS,
        fp8_flops=1000 * TFLOPS,
        interconnect_bandwidth=64 * GB,
        price_per_hour=1.89,
        link="pcie",
        # Measured on shared/data/vllm-runs/rtxpro6000_llama31_8b (vLLM 0.19):
        # unqueued prefills run at ~47% of 500 TFLOPS (1,320 tokens in
        # 79 ms), decode-only steps at ~80% of 1,792 GB/s; 0.55 / 0.8 (the
        # old defaults) put the run's percentiles within 7.2%.
        flops_efficiency=0.55,
        bandwidth_efficiency=0.8,
    ),
    # NVIDIA Ada Lovelace architecture whitepaper (GeForce RTX 4090): 24 GB
    # GDDR6X at 1,008 GB/s; FP16/BF16 tensor with FP32 accumulate 165.2 TFLOPS
    # dense (330.4 sparse), FP8 with FP32 accumulate 330.3 dense. No NVLink:
    # PCIe 4.0 x16, 32 GB/s per direction (P2P is disabled on GeForce, so
    # all-reduce goes through host memory; see timing.AllReduceModel).
    # Memory: PyTorch reports "total capacity of 23.64 GiB" on a 24 GB 4090.
    # Price: $0.35/h is an assumption (community-cloud listings); override it.
    "rtx-4090": GPUSpec(
        name="rtx-4090",
        memory_bytes=int(23.64 * GiB),
        hbm_bandwidth=1008 * GB,
        bf16_flops=165.2 * TFLOPS,
        fp8_flops=330.3 * TFLOPS,
        interconnect_bandwidth=32 * GB,
        price_per_hour=0.35,
        link="pcie",
        # Measured on shared/data/vllm-runs/rtx4090_llama31_8b_seqs128 (vLLM
        # 0.19): unqueued prefills at ~80% of 165.2 TFLOPS (2,358 tokens in
        # 244 ms; GeForce cards boost above their rated clock; 0.75 here, as
        # the model adds a 2 ms step overhead), decode-only seconds at ~88% of
        # 1,008 GB/s (25.5 ms a step with 41K tokens of KV).
        flops_efficiency=0.75,
        bandwidth_efficiency=0.88,
    ),
}


def _hf_dtype(config: Mapping[str, Any]) -> WeightDType:
    quant = config.get("quantization_config")
    if isinstance(quant, Mapping) and str(quant.get("quant_method", "")).lower() == "fp8":
        return "fp8"
    dtype = str(config.get("torch_dtype", config.get("dtype", "bfloat16"))).lower()
    return "fp16" if dtype in ("float16", "fp16", "half") else "bf16"


def model_from_hf_config(
    config: Mapping[str, Any] | str | Path,
    name: str | None = None,
    weight_dtype: WeightDType | None = None,
) -> ModelSpec:
    """Build a ModelSpec from a Hugging Face `config.json` (a path or a dict).

    Handles Llama, Qwen2/Qwen3 and Qwen3-MoE keys: `num_key_value_heads`
    (defaults to `num_attention_heads`), `head_dim` (defaults to
    hidden/heads), `num_experts`, `num_experts_per_tok`,
    `moe_intermediate_size`, `tie_word_embeddings`, `attention_bias`. The
    weight dtype comes from `quantization_config.quant_method == "fp8"`, else
    `torch_dtype`, unless `weight_dtype` overrides it.
    """
    source = "<dict>"
    if isinstance(config, (str, Path)):
        source = str(config)
        try:
            loaded = json.loads(Path(config).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise CatalogError(f"cannot read HF config {source}: {e}") from e
        if not isinstance(loaded, dict):
            raise CatalogError(f"HF config {source} is not a JSON object")
        config = cast(dict[str, Any], loaded)

    def need(key: str) -> int:
        if key not in config:
            raise CatalogError(f"HF config {source} has no {key!r}; is it a decoder-only LM?")
        return int(config[key])

    hidden = need("hidden_size")
    heads = need("num_attention_heads")
    model_type = str(config.get("model_type", ""))
    num_experts = int(config.get("num_experts", config.get("num_local_experts", 0)) or 0)
    if name is None:
        name = str(config.get("_name_or_path", "") or model_type or "hf-model")
        name = name.rstrip("/").split("/")[-1].lower()
    try:
        return _model(
            name,
            num_layers=need("num_hidden_layers"),
            hidden_size=hidden,
            num_attention_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate_size=int(config.get("intermediate_size", 0) or 0),
            vocab_size=need("vocab_size"),
            max_position_embeddings=int(config.get("max_position_embeddings", 0) or 0) or 4096,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            num_experts=num_experts,
            num_experts_per_tok=int(config.get("num_experts_per_tok", 0) or 0),
            moe_intermediate_size=int(
                config.get("moe_intermediate_size", config.get("intermediate_size", 0)) or 0
            ),
            qk_norm=model_type.startswith("qwen3"),
            attention_bias=bool(config.get("attention_bias", model_type.startswith("qwen2"))),
            weight_dtype=weight_dtype or _hf_dtype(config),
        )
    except ConfigError as e:
        raise CatalogError(f"HF config {source}: {e}") from e


_GPU_KEYS = {
    "memory_gib",
    "memory_bytes",
    "hbm_bandwidth_gbps",
    "bf16_tflops",
    "fp8_tflops",
    "interconnect_gbps",
    "price_per_hour",
    "link",
    "flops_efficiency",
    "bandwidth_efficiency",
    "non_torch_gib",
}
_MODEL_KEYS = {
    "hf_config",
    "weight_dtype",
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "num_kv_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "tie_word_embeddings",
    "num_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "qk_norm",
    "attention_bias",
}


def _gpu_from_yaml(name: str, entry: Mapping[str, Any], where: str) -> GPUSpec:
    unknown = set(entry) - _GPU_KEYS
    if unknown:
        raise CatalogError(f"{where}: gpus.{name}: unknown keys {sorted(unknown)}")
    try:
        if "memory_bytes" in entry:
            memory = int(entry["memory_bytes"])
        else:
            memory = int(float(entry["memory_gib"]) * GiB)
        return GPUSpec(
            name=name,
            memory_bytes=memory,
            hbm_bandwidth=float(entry["hbm_bandwidth_gbps"]) * GB,
            bf16_flops=float(entry["bf16_tflops"]) * TFLOPS,
            fp8_flops=float(entry.get("fp8_tflops", 0.0)) * TFLOPS,
            interconnect_bandwidth=float(entry["interconnect_gbps"]) * GB,
            price_per_hour=float(entry.get("price_per_hour", 0.0)),
            link=str(entry.get("link", "nvlink")),  # type: ignore[arg-type]
            flops_efficiency=float(entry.get("flops_efficiency", 0.0)),
            bandwidth_efficiency=float(entry.get("bandwidth_efficiency", 0.0)),
            non_torch_bytes=(
                None
                if entry.get("non_torch_gib") is None
                else gib_to_bytes(entry["non_torch_gib"], "non_torch_gib")
            ),
        )
    except KeyError as e:
        raise CatalogError(f"{where}: gpus.{name}: missing key {e.args[0]!r}") from e
    except (TypeError, ValueError, ConfigError) as e:
        raise CatalogError(f"{where}: gpus.{name}: {e}") from e


def _model_from_yaml(name: str, entry: Mapping[str, Any], base_dir: Path, where: str) -> ModelSpec:
    unknown = set(entry) - _MODEL_KEYS
    if unknown:
        raise CatalogError(f"{where}: models.{name}: unknown keys {sorted(unknown)}")
    dtype = entry.get("weight_dtype")
    if dtype is not None and dtype not in DTYPE_BYTES:
        raise CatalogError(
            f"{where}: models.{name}.weight_dtype: {dtype!r} is not one of {sorted(DTYPE_BYTES)}"
        )
    if "hf_config" in entry:
        path = base_dir / str(entry["hf_config"])
        return model_from_hf_config(path, name=name, weight_dtype=dtype)
    try:
        return _model(
            name,
            num_layers=int(entry["num_layers"]),
            hidden_size=int(entry["hidden_size"]),
            num_attention_heads=int(entry["num_attention_heads"]),
            num_kv_heads=int(entry["num_kv_heads"]),
            head_dim=int(entry["head_dim"]) if "head_dim" in entry else None,
            intermediate_size=int(entry.get("intermediate_size", 0)),
            vocab_size=int(entry["vocab_size"]),
            max_position_embeddings=int(entry["max_position_embeddings"]),
            tie_word_embeddings=bool(entry.get("tie_word_embeddings", False)),
            num_experts=int(entry.get("num_experts", 0)),
            num_experts_per_tok=int(entry.get("num_experts_per_tok", 0)),
            moe_intermediate_size=int(entry.get("moe_intermediate_size", 0)),
            qk_norm=bool(entry.get("qk_norm", False)),
            attention_bias=bool(entry.get("attention_bias", False)),
            weight_dtype=dtype or "bf16",
        )
    except KeyError as e:
        raise CatalogError(f"{where}: models.{name}: missing key {e.args[0]!r}") from e
    except (TypeError, ValueError, ConfigError) as e:
        raise CatalogError(f"{where}: models.{name}: {e}") from e


@dataclass(frozen=True, slots=True)
class Catalog:
    """Named models and GPUs. `Catalog()` is the built-in one."""

    models: Mapping[str, ModelSpec] = field(default_factory=lambda: dict(BUILTIN_MODELS))
    gpus: Mapping[str, GPUSpec] = field(default_factory=lambda: dict(BUILTIN_GPUS))

    def model(self, name: str, weight_dtype: WeightDType | None = None) -> ModelSpec:
        """Look a model up by name, optionally re-typed (e.g. weight_dtype="fp8")."""
        try:
            spec = self.models[name]
        except KeyError:
            raise CatalogError(
                f"unknown model {name!r}; known: {', '.join(sorted(self.models))}. "
                "Add it in a catalog YAML file (models:) or pass a config.json."
            ) from None
        return spec.with_weight_dtype(weight_dtype) if weight_dtype else spec

    def gpu(self, name: str) -> GPUSpec:
        try:
            return self.gpus[name]
        except KeyError:
            raise CatalogError(
                f"unknown GPU {name!r}; known: {', '.join(sorted(self.gpus))}. "
                "Add it in a catalog YAML file (gpus:)."
            ) from None

    def merged(self, models: Mapping[str, ModelSpec], gpus: Mapping[str, GPUSpec]) -> Catalog:
        """A new catalog with these entries added (same names replaced)."""
        return Catalog(models={**self.models, **models}, gpus={**self.gpus, **gpus})

    def with_non_torch_bytes(self, non_torch_bytes: int) -> Catalog:
        """This catalog with every GPU on a machine whose non-torch memory was measured.

        (GPUSpec.non_torch_bytes; e.g. the `memory_params:` of a `dualpool
        calibrate` fragment.)
        """
        from dataclasses import replace

        gpus = {n: replace(g, non_torch_bytes=non_torch_bytes) for n, g in self.gpus.items()}
        return Catalog(models=self.models, gpus=gpus)

    def load_yaml(self, path: str | Path) -> Catalog:
        """A new catalog with the `models:` and `gpus:` of a YAML file added."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise CatalogError(f"cannot read catalog file {path}: {e}") from e
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise CatalogError(f"{path}: top level must be a mapping with models: and gpus:")
        unknown = set(data) - {"models", "gpus"}
        if unknown:
            raise CatalogError(f"{path}: unknown top-level keys {sorted(unknown)}")
        models: dict[str, ModelSpec] = {}
        gpus: dict[str, GPUSpec] = {}
        for section in ("models", "gpus"):
            entries = data.get(section) or {}
            if not isinstance(entries, dict):
                raise CatalogError(f"{path}: {section}: must be a mapping of name -> fields")
            for name, entry in entries.items():
                if not isinstance(entry, dict):
                    raise CatalogError(f"{path}: {section}.{name}: must be a mapping")
                if section == "models":
                    models[str(name)] = _model_from_yaml(str(name), entry, path.parent, str(path))
                else:
                    gpus[str(name)] = _gpu_from_yaml(str(name), entry, str(path))
        return self.merged(models, gpus)


_BUILTIN = Catalog()


def get_model(name: str, weight_dtype: WeightDType | None = None) -> ModelSpec:
    """A built-in model by name (see `Catalog` for user additions)."""
    return _BUILTIN.model(name, weight_dtype)


def get_gpu(name: str) -> GPUSpec:
    """A built-in GPU by name."""
    return _BUILTIN.gpu(name)
