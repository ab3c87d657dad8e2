"""`EngineConfig`: one vLLM instance's serving knobs, with vLLM's names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dualpool.errors import ConfigError

__all__ = ["EngineConfig", "KVCacheDType"]

KVCacheDType = Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"]
_KV_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The engine arguments of one instance (`vllm serve --...`).

    Defaults follow vLLM's for an OpenAI server on an 80 GB-class GPU.
    """

    # GPUs per instance; weights and KV heads are sharded across them.
    tensor_parallel_size: int = 1
    # Longest prompt + output a request may have (tokens).
    max_model_len: int = 8192
    # Most requests in the running batch.
    max_num_seqs: int = 256
    # Token budget of one engine step (prefill chunks + decodes).
    max_num_batched_tokens: int = 8192
    # Fraction of device memory the instance may use.
    gpu_memory_utilization: float = 0.9
    # Tokens per KV block (vLLM's paged-attention page size).
    block_size: int = 16
    # Split long prompts over several steps instead of needing the whole
    # prompt to fit in max_num_batched_tokens.
    enable_chunked_prefill: bool = True
    # "auto": the model's activation dtype (BF16); "fp8*": one byte per element.
    kv_cache_dtype: KVCacheDType = "auto"
    # vLLM v1's automatic prefix caching (on by default): a preempted request
    # re-admitted before its blocks were reused skips recomputing them.
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "max_model_len", "max_num_seqs", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(name, f"must be a positive integer, got {value!r}")
        if self.tensor_parallel_size & (self.tensor_parallel_size - 1):
            # vLLM accepts any divisor of the head count; we model the usual
            # powers of two so KV-head sharding stays exact.
            raise ConfigError(
                "tensor_parallel_size",
                f"must be a power of two (1, 2, 4, 8, ...), got {self.tensor_parallel_size}",
            )
        mnbt = self.max_num_batched_tokens
        if not isinstance(mnbt, int) or isinstance(mnbt, bool) or mnbt <= 0:
            raise ConfigError("max_num_batched_tokens", f"must be a positive integer, got {mnbt!r}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(
                "gpu_memory_utilization",
                f"must be in (0, 1], got {self.gpu_memory_utilization!r}",
            )
        if self.kv_cache_dtype not in _KV_DTYPES:
            raise ConfigError(
                "kv_cache_dtype", f"must be one of {_KV_DTYPES}, got {self.kv_cache_dtype!r}"
            )
        if mnbt < self.max_num_seqs:
            raise ConfigError(
                "max_num_batched_tokens",
                f"max_num_batched_tokens ({mnbt}) must be greater than or equal to "
                f"max_num_seqs ({self.max_num_seqs}).",
            )
        if not self.enable_chunked_prefill and mnbt < self.max_model_len:
            raise ConfigError(
                "max_num_batched_tokens",
                f"max_num_batched_tokens ({mnbt}) is smaller than max_model_len "
                f"({self.max_model_len}). This effectively limits the maximum sequence "
                "length to max_num_batched_tokens and makes vLLM reject longer sequences. "
                "Please increase max_num_batched_tokens or decrease max_model_len "
                "(or enable chunked prefill).",
            )

    def kv_dtype_bytes(self, activation_dtype_bytes: int) -> int:
        """Bytes per KV element given the model's activation dtype."""
        return activation_dtype_bytes if self.kv_cache_dtype == "auto" else 1
