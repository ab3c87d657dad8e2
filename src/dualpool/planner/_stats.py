"""Student-t intervals and one-sided tests over replications (no SciPy needed).

A plan's verified figures are means over independent replications (trace
windows or synthetic seeds). Their 95% interval is `mean +- t(0.975, n-1)
sd / sqrt(n)`; a paired difference (homogeneous vs split on the same
window) is one replication's value like any other. The t distribution's CDF
comes from the regularized incomplete beta function (Lentz's continued
fraction), its quantile from bisection on the CDF.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Interval", "interval", "one_sided_confidence", "t_cdf", "t_quantile"]


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def _betai(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
    ln += b * math.log1p(-x)
    front = math.exp(ln)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(x: float, df: float) -> float:
    """P(T <= x) for Student's t with df degrees of freedom."""
    if math.isinf(x):
        return 1.0 if x > 0 else 0.0
    tail = 0.5 * _betai(df / 2.0, 0.5, df / (df + x * x))
    return 1.0 - tail if x > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (bisection on the CDF)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-10:
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True, slots=True)
class Interval:
    """A mean over n replications and its two-sided confidence interval."""

    mean: float
    half_width: float
    n: int
    confidence: float = 0.95

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def as_dict(self) -> dict[str, Any]:
        hw = self.half_width if math.isfinite(self.half_width) else None
        return {
            "mean": self.mean,
            "half_width": hw,
            "low": self.low if hw is not None else None,
            "high": self.high if hw is not None else None,
            "n": self.n,
            "confidence": self.confidence,
        }


def interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and t-interval of independent replications (half-width inf for n < 2)."""
    n = len(values)
    if n == 0:
        return Interval(math.nan, math.inf, 0, confidence)
    mean = math.fsum(values) / n
    if n < 2:
        return Interval(mean, math.inf, n, confidence)
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    t = t_quantile(0.5 + confidence / 2.0, n - 1)
    return Interval(mean, t * math.sqrt(var / n), n, confidence)


def one_sided_confidence(values: Sequence[float]) -> float:
    """Confidence that the replications' true mean is below 0 (one-sided t-test).

    1 - p-value of H0: mean >= 0. With one replication, or none spread, the
    verdict is 1.0 or 0.0 by the sign of the mean (0.5 at exactly 0).
    """
    n = len(values)
    if n == 0:
        return 0.0
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    if n < 2 or var <= 0.0:
        return 1.0 if mean < 0 else (0.5 if mean == 0 else 0.0)
    return t_cdf(-mean / math.sqrt(var / n), n - 1)
