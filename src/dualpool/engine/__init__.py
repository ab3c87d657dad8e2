"""The pure engine model: one vLLM instance's memory, step time and scheduler.

No I/O (except `Catalog.load_yaml` / `model_from_hf_config`), no clock reads:
drivers pass times in. The same `Scheduler` runs under the discrete-event
simulator (virtual time, with `fast_forward`) and the HTTP emulator (wall
clock, schedule -> sleep(step_time) -> update).

    specs.py      ModelSpec, GPUSpec, count_params
    catalog.py    built-in models/GPUs (sources cited), YAML and config.json loaders
    config.py     EngineConfig (vLLM's names, validated)
    memory.py     KV capacity as vLLM computes it; smallest_feasible_tp
    timing.py     roofline step time, decode-run closed forms, calibrate
    request.py    Request, RequestStatus, over_length_message
    kv_cache.py   KVCacheManager (block counts)
    scheduler.py  Scheduler (vLLM v1 schedule/update, fast_forward)
"""

from dualpool.engine.catalog import (
    BUILTIN_GPUS,
    BUILTIN_MODELS,
    Catalog,
    get_gpu,
    get_model,
    model_from_hf_config,
)
from dualpool.engine.config import EngineConfig, KVCacheDType
from dualpool.engine.kv_cache import KVCacheManager
from dualpool.engine.memory import (
    MemoryParams,
    MemoryPlan,
    kv_bytes_per_token,
    kv_heads_per_gpu,
    plan_memory,
    smallest_feasible_tp,
)
from dualpool.engine.request import FINISH_REASONS, Request, RequestStatus, over_length_message
from dualpool.engine.scheduler import FastForwardResult, Scheduler, SchedulerOutput, StepResult
from dualpool.engine.specs import DTYPE_BYTES, GPUSpec, ModelSpec, WeightDType, count_params
from dualpool.engine.timing import (
    AllReduceModel,
    DecodePoint,
    PrefillPoint,
    StepShape,
    StepTimeModel,
    StepTimeParams,
    calibrate,
)

__all__ = [
    "BUILTIN_GPUS",
    "BUILTIN_MODELS",
    "DTYPE_BYTES",
    "FINISH_REASONS",
    "AllReduceModel",
    "Catalog",
    "DecodePoint",
    "EngineConfig",
    "FastForwardResult",
    "GPUSpec",
    "KVCacheDType",
    "KVCacheManager",
    "MemoryParams",
    "MemoryPlan",
    "ModelSpec",
    "PrefillPoint",
    "Request",
    "RequestStatus",
    "Scheduler",
    "SchedulerOutput",
    "StepResult",
    "StepShape",
    "StepTimeModel",
    "StepTimeParams",
    "WeightDType",
    "calibrate",
    "count_params",
    "get_gpu",
    "get_model",
    "kv_bytes_per_token",
    "kv_heads_per_gpu",
    "model_from_hf_config",
    "over_length_message",
    "plan_memory",
    "smallest_feasible_tp",
]
