"""KV-cache capacity, computed the way vLLM sizes it at start-up.

Per GPU of a tensor-parallel group::

    usable     = memory_bytes x gpu_memory_utilization
    weights    = model.weight_bytes / TP
    activation = profile-run peak for max_num_batched_tokens tokens (below)
    overhead   = non-torch memory (cuBLAS/NCCL workspaces, kernel modules)
                 [+ CUDA graphs when vLLM profiles them: v0.21 and later]
    kv_memory  = usable - weights - activation - overhead
    num_blocks = floor(kv_memory / (block_size x kv_bytes_per_token))

    kv_bytes_per_token = 2 (K and V) x layers x max(1, kv_heads / TP)
                         x head_dim x kv dtype bytes

When `kv_heads < TP` each GPU still holds one whole KV head (vLLM replicates
KV heads), so TP beyond kv_heads stops shrinking the per-GPU KV footprint.

Activation peak (vLLM's profile run pushes max_num_batched_tokens dummy tokens
through the model, then samples max_num_seqs dummy requests)::

    per_token  = 2 B x (4 x hidden + (q_heads + 2 x kv_heads) x head_dim / TP
                        + 3 x ffn_width / TP)
    ffn_width  = intermediate_size (dense) or top_k x moe_intermediate_size
    activation = max_num_batched_tokens x per_token
                 + max_num_seqs x vocab / TP x 4 B x 2   (FP32 logits + probs)

Llama-3-8B, TP 1, 8,192 tokens, 256 seqs gives 1.25 GiB; vLLM logs
"PyTorch activation peak memory 1.26GiB" for it (vllm PR #10511). All the
constants are in `MemoryParams` so they can be re-fitted.
"""

from __future__ import annotations

from dataclasses import dataclass

from dualpool.engine.config import EngineConfig
from dualpool.engine.specs import GPUSpec, ModelSpec
from dualpool.errors import ConfigError, InfeasibleConfigError

__all__ = [
    "DEFAULT_NON_TORCH_BYTES",
    "MEMORY_PARAMS_KEYS",
    "MemoryParams",
    "MemoryPlan",
    "gib_to_bytes",
    "kv_bytes_per_token",
    "kv_heads_per_gpu",
    "memory_params_from_mapping",
    "non_torch_for_blocks",
    "plan_memory",
    "resolved_non_torch_bytes",
    "smallest_feasible_tp",
]

GiB = 1 << 30

# Non-torch increase of a single-GPU worker: cuBLAS/cuBLASLt workspaces and
# the lazily loaded kernel modules (FlashAttention, Triton kernels of
# torch.compile) that the profile run pulls in. Fitted, as the residue of the
# one vLLM 0.19 log we have (RTX 4090, Llama-3.1-8B: 2,588 blocks); the older
# v0 worker logged 1.79 GiB because its baseline preceded the CUDA context
# (vllm PR #10511). vLLM measures this per machine at start-up; a GPU whose
# machine was measured carries its own figure (GPUSpec.non_torch_bytes, e.g.
# from `dualpool calibrate`), which wins over this default.
DEFAULT_NON_TORCH_BYTES = int(0.89 * GiB)


@dataclass(frozen=True, slots=True)
class MemoryParams:
    """Constants of the start-up memory account (all overridable).

    The account follows vLLM 0.19's v1 worker
    (vllm/v1/worker/gpu_worker.py, Worker.determine_available_memory)::

        requested  = total_memory x gpu_memory_utilization
        non_kv     = weights_memory (model_runner.model_memory_usage)
                     + torch_peak_increase (profile_run: one forward pass of
                       max_num_batched_tokens dummy tokens, then the sampler
                       on min(max_num_seqs, max_num_batched_tokens) rows)
                     + non_torch_increase (memory outside PyTorch's allocator
                       gained since the worker's first snapshot)
        available_kv = requested - non_kv - cudagraph_memory_estimate_applied

    (vllm/utils/mem_utils.py memory_profiling computes the three non-KV
    terms.) `cudagraph_memory_estimate_applied` is 0 unless
    VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS is set: it was added off by
    default (vLLM PR #30515) and turned on by default in v0.21.0 (vLLM's
    start-up log: "CUDA graph memory profiling is enabled (default since
    v0.21.0)"). In vLLM 0.19 the graphs are captured after the KV cache is
    allocated, out of the (1 - gpu_memory_utilization) headroom, so they do
    not shrink the KV cache; set `profile_cuda_graphs=True` for >= 0.21.
    The CUDA context itself predates the snapshot and is not counted.
    """

    # Non-torch increase of a single-GPU worker (bytes). None: the GPU's
    # measured figure (GPUSpec.non_torch_bytes), else DEFAULT_NON_TORCH_BYTES
    # (0.89 GiB). An explicit value wins over both.
    non_torch_bytes: int | None = None
    # Extra non-torch memory per GPU when TP > 1 (NCCL communicators and
    # buffers, custom all-reduce IPC buffers); vllm PR #10511 logs 3.58 GiB
    # at TP 2 against 1.79 GiB at TP 1, i.e. +1.8 GiB.
    tp_comm_bytes: int = int(1.8 * GiB)
    # CUDA graph pool, subtracted before sizing the KV cache only when vLLM
    # profiles it (profile_cuda_graphs; the default from vLLM 0.21 on).
    cuda_graph_bytes: int = int(0.5 * GiB)
    profile_cuda_graphs: bool = False
    # Copies of FP32 (max_num_seqs x vocab) tensors alive at the sampler peak.
    sampler_copies: int = 2


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    """The memory account of one instance, per GPU unless said otherwise."""

    tensor_parallel_size: int
    # Device memory the framework sees.
    total_bytes: int
    # total_bytes x gpu_memory_utilization.
    usable_bytes: int
    weight_bytes: int
    activation_bytes: int
    overhead_bytes: int
    # usable - weights - activation - overhead (may be <= 0 in a failed plan).
    kv_cache_bytes: int
    kv_bytes_per_token: int
    block_size: int
    # Blocks of block_size tokens: vLLM's num_gpu_blocks.
    num_gpu_blocks: int
    max_model_len: int

    @property
    def kv_cache_tokens(self) -> int:
        """vLLM's "GPU KV cache size: N tokens"."""
        return self.num_gpu_blocks * self.block_size

    @property
    def max_concurrency(self) -> float:
        """vLLM's "Maximum concurrency for max_model_len tokens per request"."""
        return self.kv_cache_tokens / self.max_model_len

    @property
    def blocks_per_max_len_seq(self) -> int:
        return -(-self.max_model_len // self.block_size)


def kv_heads_per_gpu(model: ModelSpec, tp: int) -> int:
    """KV heads each GPU stores: kv_heads / TP, at least one (replicated)."""
    return max(1, model.num_kv_heads // tp)


def kv_bytes_per_token(model: ModelSpec, config: EngineConfig) -> int:
    """KV-cache bytes one token takes on one GPU of the TP group."""
    dtype_bytes = config.kv_dtype_bytes(model.activation_dtype_bytes)
    tp = config.tensor_parallel_size
    return 2 * model.num_layers * kv_heads_per_gpu(model, tp) * model.head_dim * dtype_bytes


def _activation_bytes(model: ModelSpec, config: EngineConfig, params: MemoryParams) -> int:
    tp = config.tensor_parallel_size
    ffn = (
        model.num_experts_per_tok * model.moe_intermediate_size
        if model.is_moe
        else model.intermediate_size
    )
    qkv = (model.num_attention_heads + 2 * model.num_kv_heads) * model.head_dim
    per_token = 2 * (4 * model.hidden_size + qkv // tp + 3 * ffn // tp)
    # vLLM's _dummy_sampler_run samples min(max_num_seqs, max_num_batched_tokens) rows.
    rows = min(config.max_num_seqs, config.max_num_batched_tokens)
    sampler = rows * (model.vocab_size // tp) * 4 * params.sampler_copies
    return config.max_num_batched_tokens * per_token + sampler


def _check_tp(model: ModelSpec, tp: int) -> None:
    if model.num_attention_heads % tp:
        raise InfeasibleConfigError(
            f"Total number of attention heads ({model.num_attention_heads}) must be divisible "
            f"by tensor parallel size ({tp}) for {model.name}."
        )
    if model.num_kv_heads >= tp and model.num_kv_heads % tp:
        raise InfeasibleConfigError(
            f"{model.name}: num_kv_heads ({model.num_kv_heads}) is not divisible by "
            f"tensor parallel size ({tp})."
        )


def resolved_non_torch_bytes(gpu: GPUSpec, params: MemoryParams | None = None) -> int:
    """The non-torch memory of a single-GPU worker: the params', else the GPU's, else 0.89 GiB."""
    if params is not None and params.non_torch_bytes is not None:
        return params.non_torch_bytes
    if gpu.non_torch_bytes is not None:
        return gpu.non_torch_bytes
    return DEFAULT_NON_TORCH_BYTES


def _overhead_bytes(gpu: GPUSpec, config: EngineConfig, params: MemoryParams) -> int:
    overhead = resolved_non_torch_bytes(gpu, params)
    if params.profile_cuda_graphs:
        overhead += params.cuda_graph_bytes
    if config.tensor_parallel_size > 1:
        overhead += params.tp_comm_bytes
    return overhead


def non_torch_for_blocks(
    model: ModelSpec,
    gpu: GPUSpec,
    config: EngineConfig,
    num_gpu_blocks: int,
    params: MemoryParams | None = None,
) -> int:
    """The non-torch memory (bytes) at which the account gives `num_gpu_blocks` blocks.

    The inverse of `plan_memory` in its machine term: a KV capacity seen in a
    run (blocks) expressed as the residue vLLM measures per machine, so that
    it carries over to other max_num_seqs, max_model_len and
    gpu_memory_utilization settings of the same machine. Half a block of
    slack sits on each side, so the floor lands on `num_gpu_blocks`. May be
    negative when the capacity exceeds what the account leaves for KV and
    non-torch memory together.
    """
    params = params or MemoryParams()
    usable = int(gpu.memory_bytes * config.gpu_memory_utilization)
    weights = -(-model.weight_bytes // config.tensor_parallel_size)
    activation = _activation_bytes(model, config, params)
    others = _overhead_bytes(gpu, config, params) - resolved_non_torch_bytes(gpu, params)
    block_bytes = kv_bytes_per_token(model, config) * config.block_size
    return usable - weights - activation - others - num_gpu_blocks * block_bytes - block_bytes // 2


def plan_memory(
    model: ModelSpec,
    gpu: GPUSpec,
    config: EngineConfig,
    params: MemoryParams | None = None,
    *,
    check: bool = True,
) -> MemoryPlan:
    """The start-up memory account; raises InfeasibleConfigError like vLLM.

    With `check=False` it returns the account even when vLLM would refuse
    to start (kv_cache_bytes <= 0, or fewer blocks than one max_model_len
    sequence needs), for reports that show by how much.
    """
    params = params or MemoryParams()
    tp = config.tensor_parallel_size
    _check_tp(model, tp)
    usable = int(gpu.memory_bytes * config.gpu_memory_utilization)
    weights = -(-model.weight_bytes // tp)
    activation = _activation_bytes(model, config, params)
    overhead = _overhead_bytes(gpu, config, params)
    kv_memory = usable - weights - activation - overhead
    per_token = kv_bytes_per_token(model, config)
    block_bytes = per_token * config.block_size
    num_blocks = max(0, kv_memory // block_bytes)
    plan = MemoryPlan(
        tensor_parallel_size=tp,
        total_bytes=gpu.memory_bytes,
        usable_bytes=usable,
        weight_bytes=weights,
        activation_bytes=activation,
        overhead_bytes=overhead,
        kv_cache_bytes=kv_memory,
        kv_bytes_per_token=per_token,
        block_size=config.block_size,
        num_gpu_blocks=num_blocks,
        max_model_len=config.max_model_len,
    )
    if check:
        check_plan(plan, model, gpu, config)
    return plan


def check_plan(plan: MemoryPlan, model: ModelSpec, gpu: GPUSpec, config: EngineConfig) -> None:
    """Raise InfeasibleConfigError when vLLM would refuse this plan."""
    where = (
        f"{model.name} ({model.weight_dtype}) on {gpu.name} with "
        f"tensor_parallel_size={plan.tensor_parallel_size}"
    )
    if plan.weight_bytes > plan.usable_bytes:
        short = (plan.weight_bytes - plan.usable_bytes) / GiB
        raise InfeasibleConfigError(
            f"{where}: model weights take {plan.weight_bytes / GiB:.2f} GiB per GPU, more than "
            f"the {plan.usable_bytes / GiB:.2f} GiB this instance may use "
            f"(total_gpu_memory {plan.total_bytes / GiB:.2f} GiB x gpu_memory_utilization "
            f"{config.gpu_memory_utilization:.2f}): short by {short:.2f} GiB before any KV "
            "cache. Use a larger tensor_parallel_size, FP8 weights, or a bigger GPU."
        )
    if plan.kv_cache_bytes <= 0:
        short = -plan.kv_cache_bytes / GiB
        raise InfeasibleConfigError(
            f"{where}: No available memory for the cache blocks: weights "
            f"{plan.weight_bytes / GiB:.2f} GiB + activation peak "
            f"{plan.activation_bytes / GiB:.2f} GiB + overhead {plan.overhead_bytes / GiB:.2f} "
            f"GiB exceed the usable {plan.usable_bytes / GiB:.2f} GiB by {short:.2f} GiB. "
            "Try increasing gpu_memory_utilization or tensor_parallel_size when initializing "
            "the engine."
        )
    needed_blocks = plan.blocks_per_max_len_seq
    if plan.num_gpu_blocks < needed_blocks:
        needed = needed_blocks * plan.block_size * plan.kv_bytes_per_token
        raise InfeasibleConfigError(
            f"{where}: To serve at least one request with the models's max seq len "
            f"({config.max_model_len}), ({needed / GiB:.2f} GiB KV cache is needed, which is "
            f"larger than the available KV cache memory ({plan.kv_cache_bytes / GiB:.2f} GiB). "
            f"Based on the available memory, the estimated maximum model length is "
            f"{plan.kv_cache_tokens}. Try increasing gpu_memory_utilization or decreasing "
            "max_model_len when initializing the engine."
        )


def smallest_feasible_tp(
    model: ModelSpec,
    gpu: GPUSpec,
    config: EngineConfig,
    params: MemoryParams | None = None,
    candidates: tuple[int, ...] = (1, 2, 4, 8),
) -> int:
    """The smallest TP in `candidates` at which vLLM would start (config's TP ignored).

    Raises InfeasibleConfigError carrying the last attempt's reason when none fits.
    """
    from dataclasses import replace

    last: InfeasibleConfigError | None = None
    for tp in candidates:
        try:
            plan_memory(model, gpu, replace(config, tensor_parallel_size=tp), params)
        except InfeasibleConfigError as e:
            last = e
            continue
        return tp
    raise InfeasibleConfigError(
        f"no tensor_parallel_size in {candidates} fits {model.name} on {gpu.name}; "
        f"at {candidates[-1]}: {last}"
    )


# -- the machine's measured memory terms, as a `memory_params:` YAML mapping ------------

# Keys of a `memory_params:` mapping (a `dualpool calibrate` fragment, a fleet
# YAML): the machine-specific terms of the account, in GiB.
MEMORY_PARAMS_KEYS = ("non_torch_gib",)


def gib_to_bytes(value: object, field: str) -> int:
    """A GiB figure from YAML as whole bytes (ConfigError naming `field` when bad)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field, f"must be a number of GiB, got {value!r}")
    v = float(value)
    if not 0.0 <= v < 1024.0:
        raise ConfigError(field, f"must be >= 0 and < 1024 GiB, got {value!r}")
    return round(v * GiB)


def memory_params_from_mapping(data: object, where: str = "memory_params") -> int | None:
    """The non-torch bytes of a parsed `memory_params:` mapping (None: not given).

    The value is applied to the GPU (`GPUSpec.non_torch_bytes`): it is the
    machine's own residue, so every engine configuration planned on that GPU
    takes it, as vLLM measures it afresh at each start-up. ConfigError names
    the key.
    """
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError("memory_params", f"{where}: must be a mapping")
    for k in data:
        if k not in MEMORY_PARAMS_KEYS:
            raise ConfigError(
                f"memory_params.{k}", f"unknown; expected one of {list(MEMORY_PARAMS_KEYS)}"
            )
    if data.get("non_torch_gib") is None:
        return None
    return gib_to_bytes(data["non_torch_gib"], "memory_params.non_torch_gib")
