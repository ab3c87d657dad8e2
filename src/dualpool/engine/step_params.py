"""StepTimeParams: the step-time model's efficiency factors and overheads.

A module of its own, out of timing.py, so that it stays a plain Python class
when the engine's hot modules are compiled with mypyc (`make compile`): it is
part of every FleetConfig, which is pickled to shard workers, and a compiled
frozen dataclass does not unpickle. How to calibrate: docs/engine-model.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dualpool.errors import ConfigError

__all__ = ["StepTimeParams", "step_params_from_mapping"]


@dataclass(frozen=True, slots=True)
class StepTimeParams:
    """Efficiency factors and overheads; calibrate them from measurements."""

    # Achieved fraction of peak tensor FLOP/s.
    flops_efficiency: float = 0.55
    # Achieved fraction of peak memory bandwidth.
    bandwidth_efficiency: float = 0.8
    # Achieved fraction of peak interconnect bandwidth.
    interconnect_efficiency: float = 0.7
    # Fixed cost of one step: CPU scheduling, input prep, kernel launches (s).
    step_overhead_s: float = 0.002
    # CPU cost per scheduled sequence (sampling, bookkeeping) (s).
    per_seq_overhead_s: float = 2e-5
    # Latency of one all-reduce (s); two per layer when TP > 1.
    allreduce_latency_s: float = 8e-6

    def __post_init__(self) -> None:
        for name in ("flops_efficiency", "bandwidth_efficiency", "interconnect_efficiency"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ConfigError(name, f"must be in (0, 1], got {v!r}")
        for name in ("step_overhead_s", "per_seq_overhead_s", "allreduce_latency_s"):
            v = getattr(self, name)
            if v < 0.0 or not math.isfinite(v):
                raise ConfigError(name, f"must be a finite number >= 0, got {v!r}")


def step_params_from_mapping(data: object, where: str = "step_params") -> StepTimeParams:
    """StepTimeParams from a parsed `step_params:` mapping (YAML); ConfigError names the key."""
    from dataclasses import fields

    if not isinstance(data, dict):
        raise ConfigError("step_params", f"{where}: must be a mapping")
    known = {f.name for f in fields(StepTimeParams)}
    for k in data:
        if k not in known:
            raise ConfigError(f"step_params.{k}", f"unknown; expected one of {sorted(known)}")
    try:
        return StepTimeParams(**{str(k): float(v) for k, v in data.items()})
    except (TypeError, ValueError) as e:
        raise ConfigError("step_params", f"{where}: {e}") from None
