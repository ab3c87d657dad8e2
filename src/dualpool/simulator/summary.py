"""Mergeable results of a simulation: per pool and for the fleet.

Everything in a `Summary` is a count, a sum or a sketch, so summaries of
time shards (or of separate machines) combine by `merge`: counts and sums
exactly, percentiles within the sketch's relative accuracy (1%).

    Summary
    ├── slo            the targets (P99 TTFT <= 2 s, P99 TPOT <= 80 ms)
    ├── span/window    simulated seconds (summed over shards)
    └── pools[name]    PoolStats: counts, tokens, TTFT/TPOT/E2E sketches,
                       busy seconds and KV-usage integral over its instances

Derived figures (`as_dict`):
- GPU-hours = instances x TP x window_s / 3600, window_s = first to last arrival;
- utilization = busy seconds / (instances x span_s), span_s = first arrival to
  the last completion (a step in progress counts as busy);
- mean KV usage = integral of usage over time / (instances x span_s), usage
  sampled at each step boundary the simulator touches (piecewise constant);
- preemptions per 1,000 requests over requests that arrived at the pool;
- SLO attainment: the fraction of completed requests meeting each target, and
  whether the P99s do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from dualpool.simulator.options import SLO
from dualpool.simulator.sketch import LogHistogram

__all__ = ["PERCENTILES", "SLO", "PoolStats", "Summary"]

PERCENTILES: tuple[float, ...] = (0.5, 0.9, 0.99)


def _sketch() -> LogHistogram:
    return LogHistogram(0.01, 1e-9)


@dataclass(slots=True)
class PoolStats:
    """Accumulated results of one pool (sums over its instances)."""

    name: str
    instances: int
    gpus_per_instance: int
    # Requests that ended in this pool (served or refused by it).
    requests: int = 0
    completed: int = 0
    # Refused by the engine here (over-length) with no larger pool left to try.
    rejected: int = 0
    # Served here after the pool first chosen refused them as over-length.
    misrouted: int = 0
    # Sent here by spillover from a saturated smaller pool.
    spilled: int = 0
    preemptions: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    # Requests meeting the TTFT target, the TPOT target, and both.
    ttft_ok: int = 0
    tpot_ok: int = 0
    slo_ok: int = 0
    # Seconds instances spent in engine steps, summed over instances.
    busy_s: float = 0.0
    # Integral of KV usage (0..1) over time, summed over instances (s).
    kv_usage_s: float = 0.0
    ttft: LogHistogram = field(default_factory=_sketch)
    tpot: LogHistogram = field(default_factory=_sketch)
    e2e: LogHistogram = field(default_factory=_sketch)

    def merge(self, other: PoolStats) -> None:
        if other.name != self.name:
            raise ValueError(f"cannot merge pool {other.name!r} into {self.name!r}")
        for f in (
            "requests",
            "completed",
            "rejected",
            "misrouted",
            "spilled",
            "preemptions",
            "prompt_tokens",
            "generated_tokens",
            "ttft_ok",
            "tpot_ok",
            "slo_ok",
            "busy_s",
            "kv_usage_s",
        ):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.ttft.merge(other.ttft)
        self.tpot.merge(other.tpot)
        self.e2e.merge(other.e2e)

    def copy(self) -> PoolStats:
        c = PoolStats(self.name, self.instances, self.gpus_per_instance)
        c.merge(self)
        return c

    def report(self, slo: SLO, span_s: float, window_s: float) -> dict[str, Any]:
        """Derived figures of this pool (see the module doc)."""
        inst = self.instances
        out: dict[str, Any] = {
            "instances": inst,
            "gpus": inst * self.gpus_per_instance,
            "requests": self.requests,
            "completed": self.completed,
            "rejected": self.rejected,
            "misrouted": self.misrouted,
            "spilled": self.spilled,
            "preemptions": self.preemptions,
            "preemptions_per_1k": 1000.0 * self.preemptions / self.requests
            if self.requests
            else 0.0,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "gpu_hours": inst * self.gpus_per_instance * window_s / 3600.0,
            "utilization": self.busy_s / (inst * span_s) if span_s > 0 and inst else 0.0,
            "kv_usage_mean": self.kv_usage_s / (inst * span_s) if span_s > 0 and inst else 0.0,
        }
        for metric, sk in (("ttft_s", self.ttft), ("tpot_s", self.tpot), ("e2e_s", self.e2e)):
            out[metric] = {
                "mean": _clean(sk.mean()),
                **{f"p{round(q * 100):d}": _clean(sk.quantile(q)) for q in PERCENTILES},
                "max": _clean(sk.max) if sk.count else None,
            }
        n = self.completed
        q = slo.quantile
        out["slo"] = {
            "ttft_attainment": self.ttft_ok / n if n else None,
            "tpot_attainment": self.tpot_ok / n if n else None,
            "attainment": self.slo_ok / n if n else None,
            f"p{q * 100:g}_ttft_met": bool(n and self.ttft.quantile(q) <= slo.ttft_s),
            f"p{q * 100:g}_tpot_met": bool(n and self.tpot.quantile(q) <= slo.tpot_s),
        }
        return out


def _clean(x: float) -> float | None:
    return None if x is None or math.isnan(x) or math.isinf(x) else x


@dataclass(slots=True)
class Summary:
    """What one simulation (or a merge of shards) found."""

    fleet: str
    slo: SLO
    pools: dict[str, PoolStats]
    # Requests fed to the router (after any warm-up window).
    requests: int = 0
    # Refused by the policy itself (over every pool's max_model_len).
    rejected_by_policy: int = 0
    # First arrival to last arrival, and first arrival to last completion (s).
    window_s: float = 0.0
    span_s: float = 0.0
    # Requests simulated but left out of the statistics (warm-up windows).
    warmup_requests: int = 0
    # Simulator work, for speed reports.
    events: int = 0
    engine_steps: int = 0
    fast_forwards: int = 0
    wall_s: float = 0.0
    shards: int = 1

    def merge(self, other: Summary) -> Summary:
        """A new summary of both runs (e.g. consecutive time shards)."""
        if set(other.pools) != set(self.pools):
            raise ValueError("cannot merge summaries of different fleets")
        out = Summary(self.fleet, self.slo, {k: v.copy() for k, v in self.pools.items()})
        for k, v in other.pools.items():
            out.pools[k].merge(v)
        for f in (
            "requests",
            "rejected_by_policy",
            "window_s",
            "span_s",
            "warmup_requests",
            "events",
            "engine_steps",
            "fast_forwards",
            "wall_s",
            "shards",
        ):
            setattr(out, f, getattr(self, f) + getattr(other, f))
        return out

    def fleet_stats(self) -> PoolStats:
        """All pools merged into one (the fleet row)."""
        pools = list(self.pools.values())
        total = PoolStats("fleet", 0, 1)
        for p in pools:
            p2 = p.copy()
            p2.name = "fleet"
            total.merge(p2)
        total.instances = sum(p.instances for p in pools)
        return total

    @property
    def completed(self) -> int:
        return sum(p.completed for p in self.pools.values())

    @property
    def misrouted(self) -> int:
        return sum(p.misrouted for p in self.pools.values())

    @property
    def rejected(self) -> int:
        return self.rejected_by_policy + sum(p.rejected for p in self.pools.values())

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dict of every derived figure."""
        pools = {
            name: p.report(self.slo, self.span_s, self.window_s) for name, p in self.pools.items()
        }
        fleet = self.fleet_stats()
        f = fleet.report(self.slo, self.span_s, self.window_s)
        # GPU-hours and utilization of the fleet add up per pool (TPs may differ).
        f["gpus"] = sum(v["gpus"] for v in pools.values())
        f["gpu_hours"] = sum(v["gpu_hours"] for v in pools.values())
        f["requests"] = self.requests
        f["rejected"] = self.rejected
        f["rejected_by_policy"] = self.rejected_by_policy
        f["preemptions_per_1k"] = (
            1000.0 * fleet.preemptions / self.requests if self.requests else 0.0
        )
        return {
            "fleet": self.fleet,
            "slo": {
                "ttft_s": self.slo.ttft_s,
                "tpot_s": self.slo.tpot_s,
                "quantile": self.slo.quantile,
            },
            "window_s": self.window_s,
            "span_s": self.span_s,
            "warmup_requests": self.warmup_requests,
            "shards": self.shards,
            "totals": f,
            "pools": pools,
            "work": {
                "events": self.events,
                "engine_steps": self.engine_steps,
                "fast_forwards": self.fast_forwards,
                "wall_s": self.wall_s,
                "requests_per_s": self.requests / self.wall_s if self.wall_s > 0 else None,
            },
        }
