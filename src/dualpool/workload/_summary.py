"""Workload statistics for reports and the capacity planner."""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from dualpool.workload._request import Request

__all__ = ["DEFAULT_BUDGETS", "PERCENTILES", "TokenStats", "WorkloadSummary", "summary"]

# B_short candidates: 2K .. 32K tokens
DEFAULT_BUDGETS: tuple[int, ...] = (2048, 4096, 8192, 16384, 32768)
PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0)
_CAP = 2**30  # keeps prompt + output inside int32


@dataclass(frozen=True, slots=True)
class TokenStats:
    """Distribution of one token count over the requests that know it."""

    mean: float
    max: int
    # percentile (50, 90, 95, 99) -> tokens
    percentiles: dict[float, float]


@dataclass(frozen=True, slots=True)
class WorkloadSummary:
    """What the planner needs to know about a workload."""

    count: int
    # first and last arrival, seconds
    first_s: float
    last_s: float
    # (count - 1) / (last_s - first_s); 0.0 with fewer than two distinct times
    rate: float
    # requests whose true prompt or output count is unknown (excluded below)
    unknown_tokens: int
    prompt: TokenStats | None
    output: TokenStats | None
    total: TokenStats | None
    # B_short -> fraction of requests with prompt + output <= B (the true need)
    alpha: dict[int, float] = field(default_factory=dict)
    # B_short -> fraction with prompt + declared budget <= B, the declared budget
    # being max_tokens when present, else the true output (what a router sees)
    alpha_declared: dict[int, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """Plain dict (JSON-friendly)."""

        def ts(t: TokenStats | None) -> dict[str, object] | None:
            if t is None:
                return None
            pct = {f"p{p:g}": v for p, v in t.percentiles.items()}
            return {"mean": t.mean, "max": t.max, **pct}

        return {
            "count": self.count,
            "first_s": self.first_s,
            "last_s": self.last_s,
            "rate": self.rate,
            "unknown_tokens": self.unknown_tokens,
            "prompt": ts(self.prompt),
            "output": ts(self.output),
            "total": ts(self.total),
            "alpha": {str(k): v for k, v in self.alpha.items()},
            "alpha_declared": {str(k): v for k, v in self.alpha_declared.items()},
        }


def _stats(a: npt.NDArray[np.int32], pcts: Sequence[float]) -> TokenStats | None:
    if a.size == 0:
        return None
    q = np.percentile(a, list(pcts))
    return TokenStats(
        mean=float(a.mean(dtype=np.float64)),
        max=int(a.max()),
        percentiles={p: float(v) for p, v in zip(pcts, q.tolist(), strict=True)},
    )


def summary(
    requests: Iterable[Request],
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    percentiles: Sequence[float] = PERCENTILES,
) -> WorkloadSummary:
    """Counts, rate, token percentiles and alpha (share under each budget).

    Streams the requests once, keeping three compact int32 arrays (12 bytes a
    request, ~20 at the peak: a 44M-request week needs ~0.9 GB); the stream
    must be finite. Counts are capped at 2**30 (far above any context).
    """
    prompt = array("i")
    output = array("i")
    declared = array("i")
    n = 0
    unknown = 0
    first = last = 0.0
    for r in requests:
        if n == 0:
            first = r.arrival_s
        last = r.arrival_s
        n += 1
        if r.prompt_tokens < 0 or r.output_tokens < 0:
            unknown += 1
            continue
        prompt.append(min(r.prompt_tokens, _CAP))
        output.append(min(r.output_tokens, _CAP))
        declared.append(min(r.output_tokens if r.max_tokens is None else r.max_tokens, _CAP))
    p = np.frombuffer(prompt, dtype=np.int32) if prompt else np.zeros(0, np.int32)
    o = np.frombuffer(output, dtype=np.int32) if output else np.zeros(0, np.int32)
    d = np.frombuffer(declared, dtype=np.int32) if declared else np.zeros(0, np.int32)
    total = p + o
    need = p + d
    known = int(total.size)
    alpha = {int(b): float(np.count_nonzero(total <= b) / known) if known else 0.0 for b in budgets}
    alpha_d = {
        int(b): float(np.count_nonzero(need <= b) / known) if known else 0.0 for b in budgets
    }
    span = last - first
    return WorkloadSummary(
        count=n,
        first_s=first,
        last_s=last,
        rate=(n - 1) / span if n >= 2 and span > 0 else 0.0,
        unknown_tokens=unknown,
        prompt=_stats(p, percentiles),
        output=_stats(o, percentiles),
        total=_stats(total, percentiles),
        alpha=alpha,
        alpha_declared=alpha_d,
    )
