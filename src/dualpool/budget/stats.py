"""Mergeable, exponentially weighted statistics behind the calibrator.

Each statistic is a handful of decayed sums. Decay by `beta` per observation
makes the sums an exponential moving average that forgets old traffic (a window
of about 1/(1-beta) observations); keeping *sums* rather than running means makes
two replicas' statistics mergeable by addition, and a snapshot a plain dict.

    RatioStats     bytes per token of one category: ratio of sums, and the
                   spread of per-request ratios (weighted first and second moments)
    OverheadStats  tokens the chat template adds: a ridge least-squares fit of
                   residual tokens ~ a + m * messages
    QuantileSketch a log-bucketed histogram of completion lengths (for p99)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OverheadStats", "QuantileSketch", "RatioStats"]


@dataclass(slots=True)
class RatioStats:
    """Bytes-per-token statistics of one category.

    c     = sum(w * bytes) / sum(w * tokens)          (the learned ratio)
    sigma = sqrt(E_w[c_obs^2] - E_w[c_obs]^2)         (spread of per-request ratios)
    """

    # Accepted observations, not decayed (drives the min-samples warm-up).
    n: int = 0
    # Decayed weight sum and weighted sums of bytes, tokens, c_obs and c_obs^2.
    w: float = 0.0
    sb: float = 0.0
    st: float = 0.0
    s1: float = 0.0
    s2: float = 0.0

    def add(self, nbytes: float, tokens: float, beta: float) -> None:
        c_obs = nbytes / tokens
        self.n += 1
        self.w = self.w * beta + 1.0
        self.sb = self.sb * beta + nbytes
        self.st = self.st * beta + tokens
        self.s1 = self.s1 * beta + c_obs
        self.s2 = self.s2 * beta + c_obs * c_obs

    def ratio(self) -> float:
        return self.sb / self.st if self.st > 0 else math.nan

    def sigma(self) -> float:
        if self.w <= 0:
            return math.nan
        mean = self.s1 / self.w
        return math.sqrt(max(0.0, self.s2 / self.w - mean * mean))

    def merge(self, other: RatioStats) -> None:
        self.n += other.n
        self.w += other.w
        self.sb += other.sb
        self.st += other.st
        self.s1 += other.s1
        self.s2 += other.s2

    def to_dict(self) -> dict[str, float]:
        return {
            "n": self.n,
            "w": self.w,
            "sb": self.sb,
            "st": self.st,
            "s1": self.s1,
            "s2": self.s2,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RatioStats:
        return cls(
            n=int(d["n"]),
            w=float(d["w"]),
            sb=float(d["sb"]),
            st=float(d["st"]),
            s1=float(d["s1"]),
            s2=float(d["s2"]),
        )


@dataclass(slots=True)
class OverheadStats:
    """Weighted least squares of residual tokens on (1, messages), with a ridge prior.

    Minimises  sum(w * (r - a - m*x)^2) + lam * ((a - a0)^2 + (m - m0)^2);
    the ridge keeps (a, m) defined when every request has the same number of
    messages (completions), where the two cannot be told apart.
    """

    n: int = 0
    w: float = 0.0
    sx: float = 0.0
    sxx: float = 0.0
    sy: float = 0.0
    sxy: float = 0.0

    def add(self, x: float, r: float, weight: float, beta: float) -> None:
        self.n += 1
        self.w = self.w * beta + weight
        self.sx = self.sx * beta + weight * x
        self.sxx = self.sxx * beta + weight * x * x
        self.sy = self.sy * beta + weight * r
        self.sxy = self.sxy * beta + weight * x * r

    def solve(self, a0: float, m0: float, lam: float) -> tuple[float, float]:
        """(a, m), both clamped at >= 0: a template never removes tokens."""
        w, sx, sxx = self.w + lam, self.sx, self.sxx + lam
        ya, ym = self.sy + lam * a0, self.sxy + lam * m0
        det = w * sxx - sx * sx
        if det <= 1e-12:
            return a0, m0
        a = (ya * sxx - sx * ym) / det
        m = (w * ym - sx * ya) / det
        if m < 0.0:  # refit the intercept alone with m pinned at 0
            m = 0.0
            a = ya / w
        return max(0.0, a), m

    def merge(self, other: OverheadStats) -> None:
        self.n += other.n
        self.w += other.w
        self.sx += other.sx
        self.sxx += other.sxx
        self.sy += other.sy
        self.sxy += other.sxy

    def to_dict(self) -> dict[str, float]:
        return {
            "n": self.n,
            "w": self.w,
            "sx": self.sx,
            "sxx": self.sxx,
            "sy": self.sy,
            "sxy": self.sxy,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OverheadStats:
        return cls(
            n=int(d["n"]),
            w=float(d["w"]),
            sx=float(d["sx"]),
            sxx=float(d["sxx"]),
            sy=float(d["sy"]),
            sxy=float(d["sxy"]),
        )


# Buckets grow by 5%: a quantile read from the sketch is within 5% of the truth.
_GROWTH = 1.05
_LOG_GROWTH = math.log(_GROWTH)
_NUM_BUCKETS = int(math.log(1 << 21) / _LOG_GROWTH) + 2  # up to ~2M tokens


@dataclass(slots=True)
class QuantileSketch:
    """Decayed log-bucket histogram of positive integers; O(1) add, mergeable.

    Bucket i holds values in [growth^i, growth^(i+1)). Instead of decaying every
    bucket on each add, each new observation weighs 1/beta more than the last
    (`scale`); when the scale grows large, everything is renormalised once.
    """

    n: int = 0
    scale: float = 1.0
    total: float = 0.0
    counts: list[float] = field(default_factory=lambda: [0.0] * _NUM_BUCKETS)

    def add(self, value: int, beta: float) -> None:
        v = max(1, value)
        i = min(_NUM_BUCKETS - 1, int(math.log(v) / _LOG_GROWTH))
        self.n += 1
        self.scale /= beta
        self.counts[i] += self.scale
        self.total += self.scale
        if self.scale > 1e100:
            self._renormalise()

    def _renormalise(self) -> None:
        s = self.scale
        self.counts = [c / s for c in self.counts]
        self.total /= s
        self.scale = 1.0

    def quantile(self, q: float) -> int:
        """Upper edge of the bucket holding quantile q (a conservative read)."""
        if self.total <= 0:
            return 0
        target = q * self.total
        acc = 0.0
        for i, c in enumerate(self.counts):
            acc += c
            if acc >= target:
                return math.ceil(_GROWTH ** (i + 1))
        return math.ceil(_GROWTH**_NUM_BUCKETS)

    def merge(self, other: QuantileSketch) -> None:
        # Bring both to unit scale so their weights are comparable, then add.
        self._renormalise()
        k = 1.0 / other.scale
        self.counts = [a + b * k for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total * k
        self.n += other.n

    def to_dict(self) -> dict[str, Any]:
        sparse = {str(i): c / self.scale for i, c in enumerate(self.counts) if c > 0}
        return {"n": self.n, "counts": sparse}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantileSketch:
        sk = cls(n=int(d["n"]))
        for k, v in d["counts"].items():
            i = int(k)
            if not 0 <= i < _NUM_BUCKETS:
                raise ValueError(f"bucket index {i} out of range")
            sk.counts[i] = float(v)
        sk.total = sum(sk.counts)
        return sk
