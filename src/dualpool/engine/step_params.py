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

__all__ = [
    "DEFAULT_BANDWIDTH_EFFICIENCY",
    "DEFAULT_FLOPS_EFFICIENCY",
    "StepTimeParams",
    "step_params_from_mapping",
]


# Achieved fractions of peak used when neither the params nor the GPU's catalog
# entry give one: guesses, close to what a vLLM 0.19 run on an RTX PRO 6000
# measured (docs/engine-model.md, fidelity).
DEFAULT_FLOPS_EFFICIENCY = 0.55
DEFAULT_BANDWIDTH_EFFICIENCY = 0.8


@dataclass(frozen=True, slots=True)
class StepTimeParams:
    """Efficiency factors and overheads; calibrate them from measurements.

    `flops_efficiency` and `bandwidth_efficiency` left at None take the GPU's
    measured figures from the catalog (GPUSpec), else the defaults above.
    """

    # Achieved fraction of peak tensor FLOP/s (None: the GPU's, else 0.55).
    flops_efficiency: float | None = None
    # Achieved fraction of peak memory bandwidth (None: the GPU's, else 0.8).
    bandwidth_efficiency: float | None = None
    # Achieved fraction of peak interconnect bandwidth.
    interconnect_efficiency: float = 0.7
    # Fixed cost of one step: CPU scheduling, input prep, kernel launches (s).
    step_overhead_s: float = 0.002
    # CPU cost per scheduled sequence (sampling, bookkeeping) (s).
    per_seq_overhead_s: float = 2e-5
    # Latency of one all-reduce by vLLM's custom all-reduce kernel (NVLink /
    # xGMI peer-to-peer, messages up to 8 MiB) (s); two per layer when TP > 1.
    allreduce_latency_s: float = 8e-6
    # Latency of one NCCL ring all-reduce (PCIe, or messages over 8 MiB) (s).
    nccl_latency_s: float = 3e-5

    def __post_init__(self) -> None:
        for name in ("flops_efficiency", "bandwidth_efficiency", "interconnect_efficiency"):
            v = getattr(self, name)
            if v is None and name != "interconnect_efficiency":
                continue
            if not isinstance(v, (int, float)) or not 0.0 < v <= 1.0:
                raise ConfigError(name, f"must be in (0, 1], got {v!r}")
        for name in (
            "step_overhead_s",
            "per_seq_overhead_s",
            "allreduce_latency_s",
            "nccl_latency_s",
        ):
            v = getattr(self, name)
            if v < 0.0 or not math.isfinite(v):
                raise ConfigError(name, f"must be a finite number >= 0, got {v!r}")

    def resolved(self, gpu_flops: float, gpu_bandwidth: float) -> tuple[float, float]:
        """(flops, bandwidth) efficiency: these params', else the GPU's, else the defaults."""
        fe = self.flops_efficiency
        if fe is None:
            fe = gpu_flops or DEFAULT_FLOPS_EFFICIENCY
        be = self.bandwidth_efficiency
        if be is None:
            be = gpu_bandwidth or DEFAULT_BANDWIDTH_EFFICIENCY
        return fe, be


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
