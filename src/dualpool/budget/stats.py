"""Mergeable, exponentially weighted statistics behind the calibrator.

Each statistic is a handful of decayed sums. Decay by `beta` per observation
makes the sums an exponential moving average that forgets old traffic (a window
of about 1/(1-beta) observations); keeping *sums* rather than running means makes
two replicas' statistics mergeable by addition, and a snapshot a plain dict.

    RatioStats     bytes per token of one category: ratio of sums, and the
                   spread of per-request ratios (weighted first and second moments)
    OverheadStats  tokens the chat template adds: a ridge least-squares fit of
                   residual tokens ~ a + m * messages
    LinearStats    tokens per byte as a linear function of the text's shape
                   (ridge least squares on feature densities), and the spread
                   of its out-of-sample errors
    QuantileSketch a log-bucketed histogram of completion lengths (for p99)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LinearStats", "OverheadStats", "QuantileSketch", "RatioStats"]


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


# The histogram of standardised errors: bins of Z_STEP standard deviations from 0
# to Z_MAX (a margin is read to within a fraction of a bin, by interpolation).
Z_STEP = 0.05
Z_MAX = 3.0
Z_BINS = round(Z_MAX / Z_STEP) + 2


class LinearStats:
    """Exponentially weighted least squares of tokens per byte on shape densities.

    One observation is a text of `b` bytes, shape counts `x_1..x_k` and `t`
    tokens. With densities z = (1, x_1/b, ..., x_k/b) and target y = t/b, the
    model is y ~ theta . z, i.e. tokens ~ theta_0*b + sum theta_j*x_j, and least
    squares on densities minimises the *relative* error of each request. Kept
    as the sufficient statistics Z'WZ and Z'Wy (decayed sums, mergeable by
    addition). `solve` shrinks each shape coefficient toward 0 by a ridge in
    units of its feature's weighted *variance* (its spread about its mean
    density), so a feature a category never shows (digits in Japanese man
    pages) stays at 0, and leaves theta_0 (tokens per byte) free: with every
    shape coefficient at 0 its least-squares value is the mean tokens per
    byte, so the prior is still the single-ratio model.

    The spread of the published model's *out-of-sample* errors (each request is
    predicted before it is learned) is fitted as
        E[(r/p)^2] ~ v/p + rho^2       (p predicted tokens, r the error)
    a part that averages out over a long text (v/p: independent pieces) and a
    part that does not (rho: a bias shared by the whole text).

    It also keeps a decayed histogram of the same errors *standardised* by the
    spread published when each was made, z = r / sd(p), so the routing margin
    can be read as an upper quantile of z (`margin`) rather than assumed normal:
    the margin that sends the same share of each category's borderline
    requests long, whatever the shape of its errors' distribution.
    """

    __slots__ = ("e1", "e11", "en", "ew", "ey", "ey1", "k", "n", "w", "zh", "zn", "zy", "zz")

    def __init__(self, k: int) -> None:
        self.k = k
        self.n = 0
        self.w = 0.0
        # Row-major k x k (the upper triangle is kept; the lower mirrors it in solve).
        self.zz = [0.0] * (k * k)
        self.zy = [0.0] * k
        # Residual fit: count, weight, and weighted sums of 1/p, 1/p^2, e^2, e^2/p.
        self.en = 0
        self.ew = 0.0
        self.e1 = 0.0
        self.e11 = 0.0
        self.ey = 0.0
        self.ey1 = 0.0
        # Standardised errors: count and decayed histogram (Z_BINS bins of Z_STEP
        # from 0, below 0 in the first, Z_MAX and above in the last).
        self.zn = 0
        self.zh = [0.0] * Z_BINS

    def add(self, z: list[float], y: float, beta: float) -> None:
        k = self.k
        self.n += 1
        self.w = self.w * beta + 1.0
        zz = self.zz
        zy = self.zy
        for i in range(k):
            zi = z[i]
            zy[i] = zy[i] * beta + zi * y
            row = i * k
            for j in range(i, k):
                zz[row + j] = zz[row + j] * beta + zi * z[j]

    def add_residual(self, predicted: float, actual: float, beta: float) -> None:
        """Record one out-of-sample error of the published model."""
        inv = 1.0 / predicted
        e = (actual - predicted) * inv
        e2 = e * e
        self.en += 1
        self.ew = self.ew * beta + 1.0
        self.e1 = self.e1 * beta + inv
        self.e11 = self.e11 * beta + inv * inv
        self.ey = self.ey * beta + e2
        self.ey1 = self.ey1 * beta + e2 * inv

    def add_standardized(self, z: float, beta: float) -> None:
        """Record one out-of-sample error in units of its published spread."""
        if z < 0.0:
            j = 0
        elif z >= Z_MAX:
            j = Z_BINS - 1
        else:
            j = 1 + int(z * (1.0 / Z_STEP))
            if j > Z_BINS - 2:
                j = Z_BINS - 2
        h = self.zh
        for i in range(Z_BINS):
            h[i] *= beta
        h[j] += 1.0
        self.zn += 1

    def margin(self, q: float) -> float:
        """The q-quantile of the standardised errors, within [0, Z_MAX]."""
        h = self.zh
        total = 0.0
        for v in h:
            total += v
        target = q * total
        acc = h[0]
        if acc >= target:
            return 0.0
        for j in range(1, Z_BINS - 1):
            v = h[j]
            if acc + v >= target:  # interpolate within the bin
                return (j - 1 + (target - acc) / v) * Z_STEP
            acc += v
        return Z_MAX

    def spread(self) -> tuple[float, float]:
        """(v, rho^2) of E[e^2] = v/p + rho^2, both clamped at >= 0."""
        w, s1, s11 = self.ew, self.e1, self.e11
        if w <= 0.0:
            return 0.0, 0.0
        det = w * s11 - s1 * s1
        if det <= 1e-12 * w * s11:  # every text the same size: all of it is rho
            return 0.0, self.ey / w
        v = (w * self.ey1 - s1 * self.ey) / det
        rho2 = (self.ey * s11 - s1 * self.ey1) / det
        if v < 0.0:
            return 0.0, self.ey / w
        if rho2 < 0.0:
            return self.ey1 / s11, 0.0
        return v, rho2

    def solve(self, theta0: float, ridge: float) -> list[float] | None:
        """Coefficients theta (tokens per byte, per shape count), or None if singular.

        `ridge` is a share of each shape feature's weighted variance. The
        second moment (before: `ridge` x sum(w z_i^2), theta_0 pulled toward
        `theta0` too) penalised a feature by its mean density, which on long
        texts (whose densities vary little about a large mean) dwarfs what the
        data says about it, and pulled theta_0, the bytes' share *beyond* the
        shape counts, toward the whole ratio: both biased the model
        (docs/estimator.md). `theta0` is the model without data.
        """
        k = self.k
        a = [0.0] * (k * k)
        b = [0.0] * k
        zz = self.zz
        # z_0 = 1 in every observation: zz[0] is the weight, zz[i] (row 0) the
        # weighted sum of z_i, so each feature's variance is at hand.
        w = zz[0]
        for i in range(k):
            for j in range(i, k):
                a[i * k + j] = a[j * k + i] = zz[i * k + j]
            lam = 1e-12
            if i > 0 and w > 0.0:
                s = zz[i]
                var = zz[i * k + i] - s * s / w
                if var > 0.0:
                    lam += ridge * var
            a[i * k + i] += lam
            b[i] = self.zy[i] + (lam * theta0 if i == 0 else 0.0)
        # Cholesky, in place: a = L L' (lower triangle).
        for j in range(k):
            d = a[j * k + j]
            for p in range(j):
                d -= a[j * k + p] * a[j * k + p]
            if d <= 1e-18:
                return None
            d = math.sqrt(d)
            a[j * k + j] = d
            for i in range(j + 1, k):
                s = a[i * k + j]
                for p in range(j):
                    s -= a[i * k + p] * a[j * k + p]
                a[i * k + j] = s / d
        for i in range(k):  # L u = b
            s = b[i]
            for p in range(i):
                s -= a[i * k + p] * b[p]
            b[i] = s / a[i * k + i]
        for i in range(k - 1, -1, -1):  # L' theta = u
            s = b[i]
            for p in range(i + 1, k):
                s -= a[p * k + i] * b[p]
            b[i] = s / a[i * k + i]
        return b

    def merge(self, other: LinearStats) -> None:
        if other.k != self.k:
            raise ValueError(f"linear statistics of {other.k} features, expected {self.k}")
        self.n += other.n
        self.w += other.w
        self.zz = [a + b for a, b in zip(self.zz, other.zz, strict=True)]
        self.zy = [a + b for a, b in zip(self.zy, other.zy, strict=True)]
        self.en += other.en
        self.ew += other.ew
        self.e1 += other.e1
        self.e11 += other.e11
        self.ey += other.ey
        self.ey1 += other.ey1
        self.zn += other.zn
        self.zh = [a + b for a, b in zip(self.zh, other.zh, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "n": self.n,
            "w": self.w,
            "zz": list(self.zz),
            "zy": list(self.zy),
            "residuals": [self.en, self.ew, self.e1, self.e11, self.ey, self.ey1],
            "standardized": [self.zn, *self.zh],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LinearStats:
        k = int(d["k"])
        st = cls(k)
        st.n = int(d["n"])
        st.w = float(d["w"])
        zz = [float(v) for v in d["zz"]]
        zy = [float(v) for v in d["zy"]]
        if len(zz) != k * k or len(zy) != k:
            raise ValueError("linear statistics of the wrong size")
        st.zz, st.zy = zz, zy
        en, ew, e1, e11, ey, ey1 = d["residuals"]
        st.en = int(en)
        st.ew, st.e1, st.e11, st.ey, st.ey1 = (
            float(ew),
            float(e1),
            float(e11),
            float(ey),
            float(ey1),
        )
        zs = d.get("standardized")
        if zs is not None:
            zh = [float(v) for v in zs[1:]]
            if len(zh) != Z_BINS:
                raise ValueError("standardised error histogram of the wrong size")
            st.zn, st.zh = int(zs[0]), zh
        return st


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
