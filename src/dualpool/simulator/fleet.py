"""Fleets: pools of identical vLLM instances, from code or YAML.

    FleetConfig
    ├── model, gpu            one model on one GPU type (catalog specs)
    ├── step_params           the timing model's efficiencies (defaults: uncalibrated)
    │                         (YAML memory_params: {non_torch_gib: ..} sets the GPU's
    │                          measured non-torch memory, from `dualpool calibrate`)
    └── pools                 smallest max_model_len first
        └── PoolConfig        name, EngineConfig, instances, routing threshold

YAML (every error names the field, e.g. `pools[1].engine.max_num_seqs: ...`)::

    model: llama-3-70b
    gpu: h100-80gb
    pools:
      - name: short
        instances: 60
        threshold: 8192             # B_short (default: max_model_len)
        engine: {max_model_len: 8192, max_num_seqs: 128, max_num_batched_tokens: 16384}
      - name: long
        instances: 20
        engine: {max_model_len: 65536, max_num_seqs: 16, max_num_batched_tokens: 8192,
                 tensor_parallel_size: 4}

A pool's `tensor_parallel_size` defaults to the smallest the config fits
(`engine.smallest_feasible_tp`). `instances` may be omitted (None) and filled
by `sizing.size_fleet` for a target utilization.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dualpool.engine import (
    Catalog,
    EngineConfig,
    GPUSpec,
    ModelSpec,
    StepTimeParams,
    get_gpu,
    get_model,
    plan_memory,
    smallest_feasible_tp,
)
from dualpool.engine.memory import memory_params_from_mapping
from dualpool.errors import CatalogError, ConfigError, DualpoolError, InfeasibleConfigError
from dualpool.policy import PoolSpec

__all__ = [
    "LONG_ENGINE",
    "SHORT_ENGINE",
    "FleetConfig",
    "PoolConfig",
    "dual_pool_fleet",
    "homogeneous_fleet",
    "load_fleet",
]

# The paper's pool configurations (TP chosen per model/GPU when built).
SHORT_ENGINE = EngineConfig(max_model_len=8192, max_num_seqs=128, max_num_batched_tokens=16384)
LONG_ENGINE = EngineConfig(max_model_len=65536, max_num_seqs=16, max_num_batched_tokens=8192)


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """One pool: `instances` copies of one engine config."""

    name: str
    engine: EngineConfig
    # Number of instances; None until sized (see sizing.size_fleet).
    instances: int | None = None
    # Largest routing budget sent here first (B_short); None: max_model_len.
    threshold: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("pools[].name", f"must be a non-empty string, got {self.name!r}")
        n = self.instances
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(f"pools.{self.name}.instances", f"must be an integer >= 1, got {n!r}")
        # PoolSpec validates the threshold against max_model_len.
        self.spec()

    def spec(self) -> PoolSpec:
        """The routing view of this pool."""
        return PoolSpec(self.name, self.engine.max_model_len, self.threshold)

    @property
    def num_instances(self) -> int:
        if self.instances is None:
            raise ConfigError(f"pools.{self.name}.instances", "not set (size the fleet first)")
        return self.instances

    @property
    def gpus_per_instance(self) -> int:
        return self.engine.tensor_parallel_size


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """Pools of one model on one GPU type; picklable, so shards can ship it."""

    model: ModelSpec
    gpu: GPUSpec
    pools: tuple[PoolConfig, ...]
    step_params: StepTimeParams = field(default_factory=StepTimeParams)

    def __post_init__(self) -> None:
        if not self.pools:
            raise ConfigError("pools", "at least one pool is required")
        names = [p.name for p in self.pools]
        for n in names:
            if names.count(n) > 1:
                raise ConfigError("pools", f"pool names must be unique; {n!r} repeats")
        # Smallest context first: the order the routing policy uses.
        ordered = tuple(
            sorted(self.pools, key=lambda p: (p.engine.max_model_len, p.spec().effective_threshold))
        )
        object.__setattr__(self, "pools", ordered)
        for i, p in enumerate(ordered):
            try:
                plan_memory(self.model, self.gpu, p.engine)
            except InfeasibleConfigError as e:
                raise ConfigError(f"pools[{i}].engine ({p.name})", str(e)) from None

    @property
    def pool_specs(self) -> list[PoolSpec]:
        return [p.spec() for p in self.pools]

    @property
    def is_sized(self) -> bool:
        return all(p.instances is not None for p in self.pools)

    @property
    def num_instances(self) -> int:
        return sum(p.num_instances for p in self.pools)

    @property
    def num_gpus(self) -> int:
        return sum(p.num_instances * p.gpus_per_instance for p in self.pools)

    def with_instances(self, counts: Sequence[int]) -> FleetConfig:
        """The same fleet with these instance counts (pool order)."""
        if len(counts) != len(self.pools):
            raise ConfigError("instances", f"need {len(self.pools)} counts, got {len(counts)}")
        pools = tuple(
            dataclasses.replace(p, instances=n) for p, n in zip(self.pools, counts, strict=True)
        )
        return dataclasses.replace(self, pools=pools)

    def describe(self) -> str:
        parts = []
        for p in self.pools:
            e = p.engine
            n = "?" if p.instances is None else str(p.instances)
            parts.append(
                f"{p.name}: {n} x TP{e.tensor_parallel_size} (len {e.max_model_len:,}, "
                f"seqs {e.max_num_seqs}, batch {e.max_num_batched_tokens:,}"
                + (f", threshold {p.threshold:,}" if p.threshold is not None else "")
                + ")"
            )
        return f"{self.model.name} on {self.gpu.name}; " + "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """The YAML/JSON form (round-trips through `FleetConfig.from_mapping`)."""
        pools = []
        for p in self.pools:
            e = p.engine
            eng = {f.name: getattr(e, f.name) for f in dataclasses.fields(e)}
            d: dict[str, Any] = {"name": p.name, "instances": p.instances, "engine": eng}
            if p.threshold is not None:
                d["threshold"] = p.threshold
            pools.append(d)
        out: dict[str, Any] = {"model": self.model.name, "gpu": self.gpu.name, "pools": pools}
        if self.model.weight_dtype != "bf16":
            out["weight_dtype"] = self.model.weight_dtype
        default = StepTimeParams()
        changed = {
            f.name: getattr(self.step_params, f.name)
            for f in dataclasses.fields(StepTimeParams)
            if getattr(self.step_params, f.name) != getattr(default, f.name)
        }
        if changed:
            out["step_params"] = changed
        if self.gpu.non_torch_bytes is not None:
            out["memory_params"] = {"non_torch_gib": round(self.gpu.non_torch_bytes / 2**30, 6)}
        return out

    @classmethod
    def from_mapping(cls, data: Any, catalog: Catalog | None = None) -> FleetConfig:
        """Build from parsed YAML/JSON; a ConfigError names the bad field."""
        if not isinstance(data, Mapping):
            raise ConfigError("fleet", f"must be a mapping, got {type(data).__name__}")
        keys = {"model", "gpu", "weight_dtype", "pools", "step_params", "memory_params"}
        unknown = sorted(set(data) - keys)
        if unknown:
            raise ConfigError(
                unknown[0],
                "unknown key; expected model, gpu, weight_dtype, pools, step_params, memory_params",
            )
        cat = catalog or Catalog()
        for key in ("model", "gpu"):
            if not isinstance(data.get(key), str):
                raise ConfigError(key, f"must be a catalog name, got {data.get(key)!r}")
        try:
            model = cat.model(data["model"], data.get("weight_dtype"))
        except (CatalogError, DualpoolError) as e:
            raise ConfigError("model", str(e)) from None
        try:
            gpu = cat.gpu(data["gpu"])
        except (CatalogError, DualpoolError) as e:
            raise ConfigError("gpu", str(e)) from None
        mp = data.get("memory_params")
        non_torch = memory_params_from_mapping(dict(mp) if isinstance(mp, Mapping) else mp)
        if non_torch is not None:
            # The machine's measured non-torch memory (a `dualpool calibrate` fragment).
            gpu = dataclasses.replace(gpu, non_torch_bytes=non_torch)
        params = StepTimeParams()
        sp = data.get("step_params")
        if sp is not None:
            if not isinstance(sp, Mapping):
                raise ConfigError("step_params", "must be a mapping")
            fields = {f.name for f in dataclasses.fields(StepTimeParams)}
            for k in sp:
                if k not in fields:
                    raise ConfigError(
                        f"step_params.{k}", f"unknown; expected one of {sorted(fields)}"
                    )
            try:
                params = StepTimeParams(**dict(sp))
            except ConfigError as e:
                raise ConfigError(f"step_params.{e.field}", str(e).split(": ", 1)[-1]) from None
            except TypeError as e:
                raise ConfigError("step_params", str(e)) from None
        raw = data.get("pools")
        if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
            raise ConfigError("pools", "must be a non-empty list of pools")
        pools = [_pool_from_mapping(i, p, model, gpu) for i, p in enumerate(raw)]
        return cls(model, gpu, tuple(pools), params)


_POOL_KEYS = ("name", "instances", "threshold", "engine")
_ENGINE_KEYS = tuple(f.name for f in dataclasses.fields(EngineConfig))


def _pool_from_mapping(i: int, raw: Any, model: ModelSpec, gpu: GPUSpec) -> PoolConfig:
    where = f"pools[{i}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(where, "must be a mapping with name, engine, instances")
    for k in raw:
        if k not in _POOL_KEYS:
            raise ConfigError(
                f"{where}.{k}", f"unknown key; expected one of {', '.join(_POOL_KEYS)}"
            )
    eng = raw.get("engine", {})
    if not isinstance(eng, Mapping):
        raise ConfigError(f"{where}.engine", "must be a mapping of vLLM engine arguments")
    for k in eng:
        if k not in _ENGINE_KEYS:
            raise ConfigError(
                f"{where}.engine.{k}",
                f"unknown engine argument; expected one of {', '.join(_ENGINE_KEYS)}",
            )
    try:
        engine = EngineConfig(**dict(eng))
    except ConfigError as e:
        raise ConfigError(f"{where}.engine.{e.field}", str(e).split(": ", 1)[-1]) from None
    if "tensor_parallel_size" not in eng:
        try:
            tp = smallest_feasible_tp(model, gpu, engine)
        except InfeasibleConfigError as e:
            raise ConfigError(f"{where}.engine", str(e)) from None
        engine = dataclasses.replace(engine, tensor_parallel_size=tp)
    try:
        return PoolConfig(raw.get("name", ""), engine, raw.get("instances"), raw.get("threshold"))
    except ConfigError as e:
        field_ = e.field.replace("pools[].", "").split(".")[-1]
        raise ConfigError(f"{where}.{field_}", str(e).split(": ", 1)[-1]) from None


def load_fleet(path: str | Path, catalog: Catalog | None = None) -> FleetConfig:
    """Read a fleet YAML file (see the module doc)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError("--fleet", f"cannot read {p}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("--fleet", f"{p}: not valid YAML: {e}") from None
    try:
        return FleetConfig.from_mapping(data, catalog)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e.field}", str(e).split(": ", 1)[-1]) from None


def _with_tp(model: ModelSpec, gpu: GPUSpec, engine: EngineConfig, tp: int | None) -> EngineConfig:
    if tp is None:
        tp = smallest_feasible_tp(model, gpu, engine)
    return dataclasses.replace(engine, tensor_parallel_size=tp)


def dual_pool_fleet(
    model: ModelSpec | str = "llama-3-70b",
    gpu: GPUSpec | str = "h100-80gb",
    *,
    short: int | None = None,
    long: int | None = None,
    b_short: int | None = None,
    tp: int | None = None,
    short_engine: EngineConfig = SHORT_ENGINE,
    long_engine: EngineConfig = LONG_ENGINE,
    step_params: StepTimeParams | None = None,
) -> FleetConfig:
    """The paper's two pools (short 8K/128/16K, long 64K/16/8K).

    Each pool's TP is `tp`, else the smallest its config fits.
    `b_short` is the short pool's routing threshold (default its max_model_len).
    """
    m = get_model(model) if isinstance(model, str) else model
    g = get_gpu(gpu) if isinstance(gpu, str) else gpu
    return FleetConfig(
        m,
        g,
        (
            PoolConfig("short", _with_tp(m, g, short_engine, tp), short, b_short),
            PoolConfig("long", _with_tp(m, g, long_engine, tp), long),
        ),
        step_params or StepTimeParams(),
    )


def homogeneous_fleet(
    model: ModelSpec | str = "llama-3-70b",
    gpu: GPUSpec | str = "h100-80gb",
    *,
    instances: int | None = None,
    tp: int | None = None,
    engine: EngineConfig = LONG_ENGINE,
    step_params: StepTimeParams | None = None,
) -> FleetConfig:
    """One pool configured for the worst case (the paper's baseline, 64K/16/8K)."""
    m = get_model(model) if isinstance(model, str) else model
    g = get_gpu(gpu) if isinstance(gpu, str) else gpu
    return FleetConfig(
        m,
        g,
        (PoolConfig("all", _with_tp(m, g, engine, tp), instances),),
        step_params or StepTimeParams(),
    )
