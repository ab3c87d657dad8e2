"""SimOptions and SLO: how to run a simulation (the fleet and the workload are passed apart).

A module of its own, out of simulation.py and summary.py, so that these stay
plain Python classes when the simulator's hot modules are compiled with mypyc
(`make compile`): they are pickled to and from shard workers, and a compiled
frozen dataclass does not unpickle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from dualpool.budget import EstimatorConfig
from dualpool.errors import ConfigError
from dualpool.policy.adaptive import AdaptiveConfig
from dualpool.simulator.balancer import parse_balancer

__all__ = ["SLO", "SimOptions"]


@dataclass(frozen=True, slots=True)
class SLO:
    """Latency targets: a request meets them when TTFT and TPOT are at most these."""

    ttft_s: float = 2.0
    tpot_s: float = 0.080
    # The percentile the targets apply to for the pass/fail verdict.
    quantile: float = 0.99

    def __post_init__(self) -> None:
        for name in ("ttft_s", "tpot_s"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and v > 0 and math.isfinite(v)):
                raise ConfigError(f"slo.{name}", f"must be a positive number, got {v!r}")
        if not 0.0 < self.quantile < 1.0:
            raise ConfigError("slo.quantile", f"must be in (0, 1), got {self.quantile!r}")


@dataclass(frozen=True, slots=True)
class SimOptions:
    """How to run a simulation (the fleet and the workload are passed apart)."""

    # Intra-pool balancer: rr, lor (least outstanding requests), kv (least KV use) or gw
    # (the gateway's own picker, dualpool.fleet).
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
    # Move the short pool's threshold online (policy.ThresholdController); None: static.
    adaptive: AdaptiveConfig | None = None

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
