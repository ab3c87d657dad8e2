"""SimOptions: how to run a simulation (the fleet and the workload are passed apart).

A module of its own, out of simulation.py, so that it stays a plain Python
class when the simulator's hot modules are compiled with mypyc (`make compile`):
it is pickled to shard workers, and a compiled frozen dataclass does not unpickle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from dualpool.budget import EstimatorConfig
from dualpool.errors import ConfigError
from dualpool.simulator.balancer import parse_balancer
from dualpool.simulator.summary import SLO

__all__ = ["SimOptions"]


@dataclass(frozen=True, slots=True)
class SimOptions:
    """How to run a simulation (the fleet and the workload are passed apart)."""

    # Intra-pool balancer: rr, lor (least outstanding requests) or kv (least KV use).
    balancer: str = "lor"
    # Let the policy spill short requests to a larger pool when theirs is saturated.
    spillover: bool = False
    # A pool is saturated when its mean waiting queue per instance exceeds this...
    saturation_waiting: float = 4.0
    # ...or its mean KV usage exceeds this fraction.
    saturation_kv: float = 0.95
    # Seconds at the start of the run (of each shard) simulated but not counted.
    warmup_s: float = 0.0
    # Bytes per token by workload category for synthetic prompt bytes
    # (length-only traces); None: workload.DEFAULT_BYTES_PER_TOKEN.
    bytes_per_token: Mapping[str, float] | None = None
    # Relative jitter (normal sigma) of those synthetic bytes.
    bytes_jitter: float = 0.1
    # Seeds the synthetic prompt bytes.
    seed: int = 0
    slo: SLO = field(default_factory=SLO)
    # The router's estimator settings (the gateway's defaults when None).
    estimator: EstimatorConfig | None = None

    def __post_init__(self) -> None:
        parse_balancer(self.balancer)
        if self.warmup_s < 0 or not math.isfinite(self.warmup_s):
            raise ConfigError("warmup_s", f"must be a finite number >= 0, got {self.warmup_s!r}")
        if self.saturation_waiting < 0:
            raise ConfigError("saturation_waiting", "must be >= 0")
        if not 0 < self.saturation_kv <= 1:
            raise ConfigError("saturation_kv", "must be in (0, 1]")
        if self.bytes_jitter < 0:
            raise ConfigError("bytes_jitter", "must be >= 0")
