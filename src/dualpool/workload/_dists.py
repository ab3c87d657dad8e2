"""Token-length distributions for synthetic workloads.

Two layers:

- `TokenDist` draws one length per request: `LogNormalMixture` (parametric,
  truncated to [lo, hi]) or `TokenCdf` (an empirical CDF of points).
- `LengthModel` draws a (prompt, output) pair per request: `Independent`
  (one TokenDist each) or `SplitTotal` (a total, split by an output fraction).

All draws are vectorized (`sample(rng, n)` returns int64 arrays).
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from dualpool.errors import WorkloadError
from dualpool.workload._base import check_positive

__all__ = [
    "Independent",
    "LengthModel",
    "LogNormalMixture",
    "SplitTotal",
    "TokenCdf",
    "TokenDist",
]

IntArray = npt.NDArray[np.int64]


class TokenDist(ABC):
    """A distribution of positive token counts."""

    @abstractmethod
    def sample(self, rng: np.random.Generator, n: int) -> IntArray:
        """n i.i.d. draws, each >= 1."""

    @abstractmethod
    def describe(self) -> str:
        """A short description."""


@dataclass(frozen=True)
class LogNormalMixture(TokenDist):
    """A mixture of lognormals, rounded to ints and truncated to [lo, hi].

    Truncation is by rejection (out-of-range draws are redrawn), so mass is
    not piled up at the bounds.
    """

    # (weight, mu, sigma) per component; mu and sigma of the log of the length
    components: tuple[tuple[float, float, float], ...]
    lo: int = 1
    hi: int | None = None

    def __post_init__(self) -> None:
        if not self.components:
            raise WorkloadError("a lognormal mixture needs at least one component")
        for w, mu, sigma in self.components:
            check_positive("mixture weight", w)
            if not math.isfinite(mu):
                raise WorkloadError(f"lognormal mu must be finite, got {mu!r}")
            check_positive("lognormal sigma", sigma, allow_zero=True)
        if self.lo < 1 or (self.hi is not None and self.hi < self.lo):
            raise WorkloadError(f"bad length bounds lo={self.lo} hi={self.hi}: need 1 <= lo <= hi")

    @classmethod
    def single(
        cls, mu: float, sigma: float, lo: int = 1, hi: int | None = None
    ) -> LogNormalMixture:
        """One lognormal component."""
        return cls(((1.0, mu, sigma),), lo, hi)

    def sample(self, rng: np.random.Generator, n: int) -> IntArray:
        w = np.array([c[0] for c in self.components], dtype=np.float64)
        mu = np.array([c[1] for c in self.components], dtype=np.float64)
        sd = np.array([c[2] for c in self.components], dtype=np.float64)
        cum = np.cumsum(w / w.sum())
        out = np.empty(n, dtype=np.int64)
        todo = np.arange(n)
        hi = math.inf if self.hi is None else self.hi
        for _ in range(1000):
            if todo.size == 0:
                return out
            comp = np.searchsorted(cum, rng.random(todo.size), side="right")
            comp = np.minimum(comp, len(cum) - 1)
            x = np.rint(np.exp(rng.normal(mu[comp], sd[comp])))
            ok = (x >= self.lo) & (x <= hi)
            out[todo[ok]] = x[ok].astype(np.int64)
            todo = todo[~ok]
        raise WorkloadError(
            f"lognormal mixture {self.components} puts almost no mass in "
            f"[{self.lo}, {self.hi}]; widen the bounds"
        )

    def describe(self) -> str:
        parts = [f"{w:g}*LN({mu:g},{s:g})" for w, mu, s in self.components]
        return " + ".join(parts)


class TokenCdf(TokenDist):
    """An empirical CDF of token counts, sampled by inverse CDF.

    Points are `(tokens, F)` with F = P(length <= tokens). Between points we
    interpolate log-linearly: log(tokens) is linear in F. Token CDFs are given
    on a doubling grid (64, 128, 256, ...), and lengths are roughly lognormal,
    so a straight line in F over a doubling is a far better fit than a linear
    one (which would put the mass of a bucket near its top). Below the first
    point the curve starts at (min_tokens, 0) unless the CDF already starts
    at F = 0; flat segments carry no mass.
    """

    def __init__(
        self,
        points: Sequence[Sequence[float]],
        *,
        min_tokens: int = 2,
        source: str = "cdf",
    ) -> None:
        self.source = source
        self.points = [(float(x), float(f)) for x, f in _check_points(points, source)]
        xs = [x for x, _ in self.points]
        fs = [f for _, f in self.points]
        if fs[0] > 0.0:
            if min_tokens >= xs[0]:
                raise WorkloadError(
                    f"{source}: min_tokens={min_tokens} must be below the first point {xs[0]:g}"
                )
            xs.insert(0, float(min_tokens))
            fs.insert(0, 0.0)
        # Keep one point per F value: the last of a leading run of zeros (no mass
        # below it) and the first of any later flat run (no mass inside it).
        kx: list[float] = []
        kf: list[float] = []
        for x, f in zip(xs, fs, strict=True):
            if kf and f == kf[-1]:
                if f == 0.0:
                    kx[-1] = x
                continue
            kx.append(x)
            kf.append(f)
        self._logx = np.log(np.asarray(kx))
        self._f = np.asarray(kf)

    @classmethod
    def from_file(cls, path: str | Path, *, min_tokens: int = 2) -> TokenCdf:
        """Read `[[tokens, F], ...]` or `{"cdf": [[tokens, F], ...], ...}`."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise WorkloadError(f"{p}: no such file; check the path") from None
        except (OSError, UnicodeDecodeError) as e:
            raise WorkloadError(f"{p}: cannot read ({e})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise WorkloadError(f"{p}:{e.lineno}: not JSON ({e.msg})") from None
        if isinstance(data, dict):
            if "cdf" not in data:
                raise WorkloadError(f'{p}: expected a list of [tokens, F] or {{"cdf": [...]}}')
            data = data["cdf"]
        if not isinstance(data, list):
            raise WorkloadError(f'{p}: expected a list of [tokens, F] or {{"cdf": [...]}}')
        return cls(data, min_tokens=min_tokens, source=str(p))

    def sample(self, rng: np.random.Generator, n: int) -> IntArray:
        u = rng.random(n)
        x: npt.NDArray[np.float64] = np.rint(np.exp(np.interp(u, self._f, self._logx)))
        out: IntArray = np.maximum(x, 1.0).astype(np.int64)
        return out

    def quantile(self, q: float) -> float:
        """The interpolated q-quantile (q in [0, 1])."""
        return float(np.exp(np.interp(q, self._f, self._logx)))

    def describe(self) -> str:
        return f"cdf {Path(self.source).name} ({len(self.points)} points)"


def _check_points(points: Sequence[Sequence[float]], source: str) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for i, pt in enumerate(points):
        try:
            x, f = float(pt[0]), float(pt[1])
            if len(pt) != 2:
                raise ValueError
        except (TypeError, ValueError, IndexError, KeyError):
            raise WorkloadError(
                f"{source}: point {i} is {pt!r}; expected [tokens, cumulative_fraction]"
            ) from None
        if not (x > 0 and math.isfinite(x)) or not (0.0 <= f <= 1.0):
            raise WorkloadError(
                f"{source}: point {i} is {pt!r}; need tokens > 0 and 0 <= fraction <= 1"
            )
        if out and (x <= out[-1][0] or f < out[-1][1]):
            raise WorkloadError(
                f"{source}: point {i} {pt!r} breaks the order; tokens must increase "
                "and fractions must not decrease"
            )
        out.append((x, f))
    if not out:
        raise WorkloadError(f"{source}: empty CDF; expected [[tokens, F], ...]")
    if abs(out[-1][1] - 1.0) > 1e-6:
        raise WorkloadError(f"{source}: the last fraction is {out[-1][1]!r}; a CDF must end at 1.0")
    return out


class LengthModel(ABC):
    """Draws (prompt_tokens, output_tokens) pairs."""

    @abstractmethod
    def sample(self, rng: np.random.Generator, n: int) -> tuple[IntArray, IntArray]:
        """n pairs as two int64 arrays, every value >= 1."""

    @abstractmethod
    def describe(self) -> str:
        """A short description."""


@dataclass(frozen=True)
class Independent(LengthModel):
    """Prompt and output lengths drawn independently.

    NOTE: in the Azure 2023 traces the log-lengths are nearly uncorrelated
    (code -0.005, conv 0.087), so independence loses little.
    """

    prompt: TokenDist
    output: TokenDist

    def sample(self, rng: np.random.Generator, n: int) -> tuple[IntArray, IntArray]:
        return self.prompt.sample(rng, n), self.output.sample(rng, n)

    def describe(self) -> str:
        return f"prompt {self.prompt.describe()}, output {self.output.describe()}"


@dataclass(frozen=True)
class SplitTotal(LengthModel):
    """A total length, split into prompt and output by an output fraction.

    The fraction is fixed (`output_fraction_sd == 0`) or Beta-distributed
    with the given mean and standard deviation. Totals below 2 become 2 so
    both parts get at least one token.
    """

    total: TokenDist
    # mean share of the total that is output
    output_fraction: float = 0.2
    # standard deviation of the share (0 = fixed)
    output_fraction_sd: float = 0.0

    def __post_init__(self) -> None:
        m, s = self.output_fraction, self.output_fraction_sd
        if not (0.0 < m < 1.0):
            raise WorkloadError(f"output_fraction must be in (0, 1), got {m!r}")
        check_positive("output_fraction_sd", s, allow_zero=True)
        if s > 0 and s * s >= m * (1 - m):
            raise WorkloadError(
                f"output_fraction_sd={s!r} is too large for mean {m!r}: "
                f"need sd < sqrt(m(1-m)) = {math.sqrt(m * (1 - m)):.3f}"
            )

    def sample(self, rng: np.random.Generator, n: int) -> tuple[IntArray, IntArray]:
        total = np.maximum(self.total.sample(rng, n), 2)
        m, s = self.output_fraction, self.output_fraction_sd
        if s > 0:
            k = m * (1 - m) / (s * s) - 1.0
            frac = rng.beta(m * k, (1 - m) * k, n)
        else:
            frac = np.full(n, m)
        out = np.clip(np.rint(total * frac).astype(np.int64), 1, total - 1)
        return total - out, out

    def describe(self) -> str:
        sd = f"±{self.output_fraction_sd:g}" if self.output_fraction_sd else ""
        return f"total {self.total.describe()}, output share {self.output_fraction:g}{sd}"
