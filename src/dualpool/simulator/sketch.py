"""A bounded-memory, mergeable quantile sketch (log-bucket histogram, DDSketch-style).

A positive value x falls in bucket i = ceil(log_gamma(x)) with
gamma = (1 + a) / (1 - a); every value in bucket i lies in (gamma^(i-1), gamma^i],
and the bucket's representative 2 gamma^i / (gamma + 1) is within relative
error a of each of them. So any quantile is answered within relative
accuracy `a` (default 1%) of a value actually observed at that rank::

    values:   0.12 s   0.13 s       1.9 s   2.0 s
    buckets:  [ i=-105 ][ i=-102 ] ... [ i=32 ][ i=35 ]   counts only
                 |<-- gamma^(i-1), gamma^i -->|

Memory is one counter per occupied bucket: values from 1 µs to 1e6 s at 1%
need at most ~1,400 buckets, whatever the number of values. Two sketches
with the same accuracy merge by adding counts, so summaries of shards run
in separate processes combine exactly as if one process had seen every value.
Values <= `min_value` (zeros included) are counted in one zero bucket.

Adds are buffered and folded into the buckets with numpy in batches (a
Python-level add costs one list append).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["LogHistogram"]

_FLUSH = 8192


class LogHistogram:
    """Quantiles within relative accuracy `relative_accuracy`, mergeable, bounded."""

    __slots__ = (
        "_buf",
        "_counts",
        "_gamma",
        "_inv_log_gamma",
        "count",
        "max",
        "min",
        "min_value",
        "relative_accuracy",
        "sum",
        "zero_count",
    )

    def __init__(self, relative_accuracy: float = 0.01, min_value: float = 1e-9) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy!r}")
        self.relative_accuracy = relative_accuracy
        self.min_value = min_value
        self._gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._inv_log_gamma = 1.0 / math.log(self._gamma)
        # bucket index -> count
        self._counts: dict[int, int] = {}
        self._buf: list[float] = []
        self.zero_count = 0
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    # -- adding -------------------------------------------------------------------

    def add(self, value: float) -> None:
        """Record one value (>= 0; NaN is ignored)."""
        buf = self._buf
        buf.append(value)
        if len(buf) >= _FLUSH:
            self._flush()

    def extend(self, values: list[float]) -> None:
        self._buf.extend(values)
        if len(self._buf) >= _FLUSH:
            self._flush()

    def _flush(self) -> None:
        buf = self._buf
        if not buf:
            return
        v = np.asarray(buf, dtype=np.float64)
        self._buf = []
        v = v[~np.isnan(v)]
        if v.size == 0:
            return
        self.count += int(v.size)
        self.sum += float(v.sum())
        self.min = min(self.min, float(v.min()))
        self.max = max(self.max, float(v.max()))
        pos = v[v > self.min_value]
        self.zero_count += int(v.size - pos.size)
        if pos.size:
            idx = np.ceil(np.log(pos) * self._inv_log_gamma).astype(np.int64)
            keys, counts = np.unique(idx, return_counts=True)
            c = self._counts
            for k, n in zip(keys.tolist(), counts.tolist(), strict=True):
                c[k] = c.get(k, 0) + n

    # -- reading ------------------------------------------------------------------

    def __len__(self) -> int:
        self._flush()
        return self.count

    @property
    def num_buckets(self) -> int:
        self._flush()
        return len(self._counts)

    def mean(self) -> float:
        self._flush()
        return self.sum / self.count if self.count else math.nan

    def quantile(self, q: float) -> float:
        """The q-quantile (0 <= q <= 1), NaN when empty.

        Uses the lower rank floor(q (n - 1)), like numpy's 'lower' method; the
        answer is within relative_accuracy of the value at that rank.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q!r}")
        self._flush()
        if self.count == 0:
            return math.nan
        rank = math.floor(q * (self.count - 1))
        if rank < self.zero_count:
            return 0.0 if self.min <= 0.0 else self.min
        seen = self.zero_count
        g = self._gamma
        for k in sorted(self._counts):
            seen += self._counts[k]
            if seen > rank:
                est = 2.0 * g**k / (g + 1.0)
                # the true value lies in [min, max]: clamping only removes error
                return min(max(est, self.min), self.max)
        return self.max  # pragma: no cover (counts sum to count)

    def fraction_at_most(self, x: float) -> float:
        """Approximate fraction of values <= x (bucket resolution)."""
        self._flush()
        if self.count == 0:
            return math.nan
        n = self.zero_count
        if x > self.min_value:
            top = math.ceil(math.log(x) * self._inv_log_gamma)
            n += sum(c for k, c in self._counts.items() if k <= top)
        return n / self.count

    # -- combining ----------------------------------------------------------------

    def merge(self, other: LogHistogram) -> None:
        """Add other's values into self (same accuracy required)."""
        if other.relative_accuracy != self.relative_accuracy or other.min_value != self.min_value:
            raise ValueError("cannot merge sketches of different accuracy or min_value")
        self._flush()
        other._flush()
        c = self._counts
        for k, n in other._counts.items():
            c[k] = c.get(k, 0) + n
        self.zero_count += other.zero_count
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def copy(self) -> LogHistogram:
        h = LogHistogram(self.relative_accuracy, self.min_value)
        h.merge(self)
        return h

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-friendly, for shipping between machines)."""
        self._flush()
        return {
            "relative_accuracy": self.relative_accuracy,
            "min_value": self.min_value,
            "zero_count": self.zero_count,
            "count": self.count,
            "sum": self.sum,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "buckets": {str(k): v for k, v in sorted(self._counts.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogHistogram:
        h = cls(float(data["relative_accuracy"]), float(data["min_value"]))
        h.zero_count = int(data["zero_count"])
        h.count = int(data["count"])
        h.sum = float(data["sum"])
        h.min = math.inf if data["min"] is None else float(data["min"])
        h.max = -math.inf if data["max"] is None else float(data["max"])
        h._counts = {int(k): int(v) for k, v in data["buckets"].items()}
        return h

    def __getstate__(self) -> dict[str, Any]:
        return self.to_dict()

    def __setstate__(self, state: dict[str, Any]) -> None:
        o = LogHistogram.from_dict(state)
        self.relative_accuracy = o.relative_accuracy
        self.min_value = o.min_value
        self._gamma = o._gamma
        self._inv_log_gamma = o._inv_log_gamma
        self._counts = o._counts
        self._buf = o._buf
        self.zero_count = o.zero_count
        self.count = o.count
        self.sum = o.sum
        self.min = o.min
        self.max = o.max
