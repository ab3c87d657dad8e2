"""Synthetic arrival processes, generated in independent seeded time blocks.

Time is cut into blocks of `block_s` seconds (default 60). The arrivals of
block k come from their own generator, seeded by `(seed, stream, k)`, so:

- the stream is a pure function of (parameters, seed), and
- any block can be produced without producing the ones before it, so a time
  shard of a week-long workload starts instantly and costs no memory.

Inside a block the rate is constant (the diurnal multiplier taken at the
block's midpoint; a 60 s step is invisible next to a 24 h cycle).

- cv == 1: a Poisson process: N ~ Poisson(rate * block_s), times uniform.
- cv != 1: a gamma renewal process with shape 1/cv^2. The first arrival of a
  block is drawn from the stationary residual (U * a length-biased gap, i.e.
  U * Gamma(shape + 1)), which makes every block stationary on its own; the
  only approximation is that gaps do not straddle block boundaries.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dualpool.errors import WorkloadError
from dualpool.workload._base import check_positive

__all__ = ["DAY_S", "ArrivalProcess", "block_rng"]

DAY_S = 86_400.0

FloatArray = npt.NDArray[np.float64]


def block_rng(seed: int, stream: int, block: int) -> np.random.Generator:
    """The generator of one block: a pure function of (seed, stream, block)."""
    return np.random.default_rng([seed, stream, block])


def check_seed(seed: object) -> int:
    """Seeds are non-negative ints (numpy's SeedSequence needs that)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise WorkloadError(f"seed must be a non-negative integer, got {seed!r}")
    return seed


@dataclass(frozen=True, slots=True)
class ArrivalProcess:
    """Poisson (cv=1) or gamma-renewal arrivals with an optional diurnal cycle."""

    # mean arrival rate in requests per second (averaged over whole days)
    rate: float
    # coefficient of variation of inter-arrival gaps: 1 = Poisson, > 1 = bursty
    cv: float = 1.0
    # relative amplitude of the daily sine, 0 = flat; rate(t) = rate*(1 + a*sin(...))
    diurnal_amplitude: float = 0.0
    # seconds after t=0 at which the daily peak occurs (t=0 is taken as midnight)
    diurnal_peak_s: float = 14 * 3600.0
    # length of one independently seeded block
    block_s: float = 60.0

    def __post_init__(self) -> None:
        check_positive("rate", self.rate)
        check_positive("cv", self.cv)
        check_positive("block_s", self.block_s)
        a = self.diurnal_amplitude
        if not (0.0 <= a < 1.0):
            raise WorkloadError(f"diurnal_amplitude must be in [0, 1), got {a!r}")

    def rate_at(self, t: float) -> float:
        """Instantaneous rate (req/s) at time t."""
        if self.diurnal_amplitude == 0.0:
            return self.rate
        phase = 2.0 * math.pi * (t - self.diurnal_peak_s) / DAY_S + math.pi / 2.0
        return self.rate * (1.0 + self.diurnal_amplitude * math.sin(phase))

    def block(self, rng: np.random.Generator, k: int) -> FloatArray:
        """Sorted arrival times of block k, in [k*block_s, (k+1)*block_s)."""
        t0 = k * self.block_s
        rate = self.rate_at(t0 + self.block_s / 2.0)
        if self.cv == 1.0:
            n = int(rng.poisson(rate * self.block_s))
            times = rng.random(n)
            times.sort()
            out: FloatArray = t0 + times * self.block_s
        else:
            shape = 1.0 / (self.cv * self.cv)
            scale = 1.0 / (rate * shape)
            first = rng.random() * rng.gamma(shape + 1.0, scale)
            chunk = int(rate * self.block_s * 1.25) + 16
            parts: list[FloatArray] = []
            t = first  # the next arrival, relative to t0
            while t < self.block_s:
                gaps = rng.gamma(shape, scale, chunk)
                gaps[0] = t  # the chunk starts at the pending arrival
                cum = np.cumsum(gaps)
                parts.append(cum)
                t = float(cum[-1]) + float(rng.gamma(shape, scale))
            if not parts:
                return np.empty(0, dtype=np.float64)
            cum_all = np.concatenate(parts)
            out = t0 + cum_all[cum_all < self.block_s]
        # float rounding can push t0 + x*block_s onto the next block's start
        return np.minimum(out, np.nextafter(t0 + self.block_s, -math.inf))

    def blocks(self, seed: int, stream: int, first_block: int = 0) -> Iterator[FloatArray]:
        """Arrival arrays of blocks first_block, first_block+1, ... (forever)."""
        k = first_block
        while True:
            yield self.block(block_rng(seed, stream, k), k)
            k += 1

    def describe(self) -> str:
        kind = "poisson" if self.cv == 1.0 else f"gamma cv={self.cv:g}"
        s = f"{kind} {self.rate:g} req/s"
        if self.diurnal_amplitude:
            s += f", diurnal ±{self.diurnal_amplitude:.0%}"
        return s
