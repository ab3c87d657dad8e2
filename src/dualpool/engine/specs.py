"""Hardware and model specifications: the inputs of every engine formula.

A `ModelSpec` is what a Hugging Face `config.json` says about a decoder-only
transformer, plus the weight dtype it is served in. A `GPUSpec` is one
accelerator's datasheet line plus a default hourly price. Both are frozen
value objects; derive variants with `dataclasses.replace` or
`ModelSpec.with_weight_dtype`.

Parameter counts are derived from the architecture (`count_params`), the same
way for built-in and user models, so a catalog figure and a user's
`config.json` can never disagree about what "70B" means.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from dualpool.errors import ConfigError

__all__ = [
    "DTYPE_BYTES",
    "GPUSpec",
    "LinkType",
    "ModelSpec",
    "WeightDType",
    "count_params",
]

WeightDType = Literal["bf16", "fp16", "fp8"]
LinkType = Literal["nvlink", "xgmi", "pcie"]

# Bytes per element of each dtype we model.
DTYPE_BYTES: dict[str, int] = {"bf16": 2, "fp16": 2, "fp8": 1}

GiB = 1 << 30


def count_params(
    *,
    num_layers: int,
    hidden_size: int,
    num_attention_heads: int,
    num_kv_heads: int,
    head_dim: int,
    intermediate_size: int,
    vocab_size: int,
    tie_word_embeddings: bool = False,
    num_experts: int = 0,
    num_experts_per_tok: int = 0,
    moe_intermediate_size: int = 0,
    qk_norm: bool = False,
    attention_bias: bool = False,
) -> tuple[int, int, int]:
    """Return (total params, active params per token, embedding params).

    Counts every weight matrix of a Llama/Qwen-style decoder: q/k/v/o
    projections, SwiGLU MLP (3 matrices) or a MoE block (router + E experts of
    3 matrices, top-k active), RMSNorm vectors, token embedding and an untied
    LM head. "Embedding params" are the embedding plus LM head: they stay in
    BF16 in FP8 checkpoints.
    """
    q_out = num_attention_heads * head_dim
    kv_out = num_kv_heads * head_dim
    attn = hidden_size * q_out + 2 * hidden_size * kv_out + q_out * hidden_size
    if attention_bias:
        attn += q_out + 2 * kv_out
    if qk_norm:
        attn += 2 * head_dim
    norms = 2 * hidden_size
    if num_experts > 0:
        expert = 3 * hidden_size * moe_intermediate_size
        router = hidden_size * num_experts
        mlp_total = num_experts * expert + router
        mlp_active = num_experts_per_tok * expert + router
    else:
        mlp_total = mlp_active = 3 * hidden_size * intermediate_size
    embed = vocab_size * hidden_size * (1 if tie_word_embeddings else 2)
    total = num_layers * (attn + norms + mlp_total) + embed + hidden_size
    active = num_layers * (attn + norms + mlp_active) + embed + hidden_size
    return total, active, embed


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A decoder-only transformer as the engine model sees it.

    Field names follow Hugging Face `config.json` where one exists.
    """

    # Catalog name, lower case with hyphens (e.g. "llama-3-70b").
    name: str
    # Total parameters (all experts for MoE).
    num_params: int
    # Parameters touched per token (= num_params for dense models).
    num_active_params: int
    # Token embedding + LM head parameters (kept in BF16 by FP8 checkpoints).
    num_embedding_params: int
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    # Dense MLP width (for MoE models: the width of dense layers, unused if none).
    intermediate_size: int
    vocab_size: int
    # Longest position the model was trained for (vLLM's derived max_model_len).
    max_position_embeddings: int
    # Serving dtype of the linear-layer weights.
    weight_dtype: WeightDType = "bf16"
    # Bytes per element of the activation dtype; vLLM's kv_cache_dtype="auto"
    # uses it. FP8 *weight* checkpoints still run BF16 activations, so 2.
    activation_dtype_bytes: int = 2
    # MoE shape (0 for dense models).
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0

    def __post_init__(self) -> None:
        positive = (
            "num_params",
            "num_active_params",
            "num_layers",
            "hidden_size",
            "num_attention_heads",
            "num_kv_heads",
            "head_dim",
            "vocab_size",
            "max_position_embeddings",
        )
        for f in positive:
            if getattr(self, f) <= 0:
                raise ConfigError(f, f"must be positive, got {getattr(self, f)} for {self.name}")
        if self.weight_dtype not in DTYPE_BYTES:
            raise ConfigError(
                "weight_dtype",
                f"unknown dtype {self.weight_dtype!r}; use one of {sorted(DTYPE_BYTES)}",
            )
        if self.num_attention_heads % self.num_kv_heads:
            raise ConfigError(
                "num_kv_heads",
                f"{self.num_kv_heads} does not divide num_attention_heads "
                f"{self.num_attention_heads} for {self.name}",
            )
        if self.num_active_params > self.num_params:
            raise ConfigError("num_active_params", "cannot exceed num_params")

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def weight_bytes_per_param(self) -> int:
        return DTYPE_BYTES[self.weight_dtype]

    @property
    def weight_bytes(self) -> int:
        """Bytes of all weights; embeddings and LM head stay 16-bit under FP8."""
        linear = self.num_params - self.num_embedding_params
        return linear * self.weight_bytes_per_param + self.num_embedding_params * 2

    @property
    def expert_params(self) -> int:
        """Parameters inside routed experts (0 for dense models)."""
        if not self.is_moe:
            return 0
        return (
            self.num_layers * self.num_experts * 3 * self.hidden_size * self.moe_intermediate_size
        )

    def with_weight_dtype(self, dtype: WeightDType) -> ModelSpec:
        """The same model served with another weight dtype (e.g. "fp8")."""
        return dataclasses.replace(self, weight_dtype=dtype)


@dataclass(frozen=True, slots=True)
class GPUSpec:
    """One accelerator: capacity, peak rates and a default price."""

    # Catalog name, lower case with hyphens (e.g. "a100-80gb").
    name: str
    # Device memory visible to the framework (what vLLM calls total_gpu_memory).
    memory_bytes: int
    # Peak HBM/GDDR bandwidth in bytes/s.
    hbm_bandwidth: float
    # Dense (no sparsity) tensor-core peak in FLOP/s.
    bf16_flops: float
    # Dense FP8 peak; 0 when the GPU has no FP8 tensor cores (A100: FP8
    # weights run as W8A16 at the BF16 rate).
    fp8_flops: float
    # GPU-to-GPU bandwidth per direction in bytes/s (NVLink, xGMI, or PCIe).
    interconnect_bandwidth: float
    # Default $/GPU-hour.
    price_per_hour: float
    # GPU-to-GPU link: "nvlink" (or AMD "xgmi"): peer-to-peer, vLLM's custom
    # all-reduce; "pcie": NCCL over PCIe (vLLM disables its custom all-reduce
    # on PCIe-only systems of more than two GPUs, and GeForce parts have no P2P).
    link: LinkType = "nvlink"
    # Achieved fractions of the datasheet peaks measured on this GPU (vLLM
    # serving runs); 0 = not measured: StepTimeParams' defaults apply.
    # Explicit StepTimeParams values (a calibration) override these.
    flops_efficiency: float = 0.0
    bandwidth_efficiency: float = 0.0
    # vLLM's non-torch memory of a single-GPU worker on this machine (bytes:
    # CUDA/cuBLAS workspaces, kernel modules, allocator residue; vLLM measures
    # it at start-up), e.g. fitted by `dualpool calibrate` to a KV-bound run;
    # None = not measured: MemoryParams' default (0.89 GiB) applies.
    non_torch_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.link not in ("nvlink", "xgmi", "pcie"):
            raise ConfigError("link", f"must be nvlink, xgmi or pcie, got {self.link!r}")
        for f in ("flops_efficiency", "bandwidth_efficiency"):
            v = getattr(self, f)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f, f"must be in [0, 1] (0: not measured), got {v!r}")
        for f in ("memory_bytes", "hbm_bandwidth", "bf16_flops", "interconnect_bandwidth"):
            if getattr(self, f) <= 0:
                raise ConfigError(f, f"must be positive, got {getattr(self, f)} for {self.name}")
        nt = self.non_torch_bytes
        if nt is not None and (not isinstance(nt, int) or isinstance(nt, bool) or nt < 0):
            raise ConfigError(
                "non_torch_bytes", f"must be a whole number of bytes >= 0, got {nt!r}"
            )
        if self.fp8_flops < 0:
            raise ConfigError("fp8_flops", f"must be >= 0, got {self.fp8_flops}")
        if self.price_per_hour < 0:
            raise ConfigError("price_per_hour", f"must be >= 0, got {self.price_per_hour}")

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GiB
