"""`EmulatorConfig`: what one `dualpool emulate` process serves, validated up front."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from dualpool.engine import (
    Catalog,
    EngineConfig,
    GPUSpec,
    ModelSpec,
    Scheduler,
    StepTimeParams,
    smallest_feasible_tp,
)
from dualpool.errors import ConfigError
from dualpool.tokenizers import TOKENIZERS

__all__ = ["EmulatorConfig"]

# vLLM's default max_num_batched_tokens for the OpenAI server with chunked
# prefill on an 80 GB-class GPU (EngineConfig's default).
_DEFAULT_MNBT = EngineConfig().max_num_batched_tokens


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """One emulated vLLM config, served by `instances` identical instances.

    Field names follow `vllm serve` (tensor_parallel_size, max_model_len, ...)
    and the `dualpool emulate` flags.
    """

    # Catalog names (dualpool.engine.catalog): e.g. "llama-3.1-8b", "h100-80gb".
    model: str = "llama-3.1-8b"
    gpu: str = "h100-80gb"
    # None: the smallest TP in (1, 2, 4, 8) at which vLLM would start.
    tensor_parallel_size: int | None = None
    max_model_len: int = 8192
    max_num_seqs: int = 256
    # None: max(8192, max_num_seqs), vLLM's default for the OpenAI server.
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float = 0.9
    host: str = "127.0.0.1"
    # First port; instance i listens on port + i. 0: an ephemeral port each.
    port: int = 8001
    instances: int = 1
    # Modelled seconds per wall-clock second (10: ten times faster than the GPU).
    speedup: float = 1.0
    # Counts prompt tokens and makes filler output: "llama3", "qwen" or "bytes".
    tokenizer: str = "llama3"
    # Seeds the output-length draw of requests that give no length.
    seed: int = 0
    # The name clients must send as "model"; None: the catalog name.
    served_model_name: str | None = None
    # Median of the output-length draw for requests with no max_tokens and no
    # x-dualpool-output-tokens header (log-normal, sigma 1, capped by
    # max_model_len - prompt as vLLM's default max_tokens is).
    default_output_median: int = 200
    # Where `model` and `gpu` are looked up (the built-in one plus --catalog FILE).
    catalog: Catalog = field(default_factory=Catalog)
    # The step-time model's parameters (None: defaults; --step-params FILE).
    step_params: StepTimeParams | None = None

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise ConfigError("instances", f"must be >= 1, got {self.instances}")
        if not 0 <= self.port <= 65535 or (self.port and self.port + self.instances - 1 > 65535):
            raise ConfigError("port", f"ports {self.port}..+{self.instances - 1} out of range")
        if not self.speedup > 0:
            raise ConfigError("speedup", f"must be > 0, got {self.speedup!r}")
        if self.tokenizer not in TOKENIZERS:
            raise ConfigError(
                "tokenizer", f"unknown {self.tokenizer!r}; choose from {', '.join(TOKENIZERS)}"
            )
        if self.default_output_median < 1:
            raise ConfigError("default_output_median", "must be >= 1")

    @property
    def model_name(self) -> str:
        """The served model name (what /v1/models lists and requests must name)."""
        return self.served_model_name or self.model

    def specs(self) -> tuple[ModelSpec, GPUSpec]:
        return self.catalog.model(self.model), self.catalog.gpu(self.gpu)

    def engine_config(self) -> EngineConfig:
        """The EngineConfig with TP resolved (raises InfeasibleConfigError, ConfigError)."""
        mnbt = self.max_num_batched_tokens
        if mnbt is None:
            mnbt = max(_DEFAULT_MNBT, self.max_num_seqs)
        cfg = EngineConfig(
            tensor_parallel_size=self.tensor_parallel_size or 1,
            max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=mnbt,
            gpu_memory_utilization=self.gpu_memory_utilization,
        )
        if self.tensor_parallel_size is None:
            model, gpu = self.specs()
            cfg = replace(cfg, tensor_parallel_size=smallest_feasible_tp(model, gpu, cfg))
        return cfg

    def build_scheduler(self) -> Scheduler:
        """A fresh engine model for one instance; vLLM's start-up refusal as InfeasibleConfigError."""
        model, gpu = self.specs()
        return Scheduler.from_specs(model, gpu, self.engine_config(), self.step_params)
