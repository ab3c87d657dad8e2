"""The workload interface every source and transform implements."""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path

from dualpool.errors import WorkloadError
from dualpool.workload._request import Request

__all__ = ["Workload", "check_positive", "where"]


class Workload(ABC):
    """A re-iterable, deterministic stream of `Request`s in arrival order.

    Each `iter()` starts over and yields the same requests (for a given seed).
    Sources never hold the whole stream in memory unless they say so.
    """

    @abstractmethod
    def __iter__(self) -> Iterator[Request]:
        """Yield requests in non-decreasing `arrival_s` order."""

    @abstractmethod
    def describe(self) -> str:
        """A one-line human description (source, rate, seed, ...)."""

    def iter_window(self, start_s: float, end_s: float) -> Iterator[Request]:
        """Yield the requests with `start_s <= arrival_s < end_s`.

        The default reads from the beginning and filters; sources that can
        seek (the block-seeded synthetic generators) override it, so a shard
        late in a long workload costs no more than an early one.
        """
        for r in self:
            a = r.arrival_s
            if a >= end_s:
                return
            if a >= start_s:
                yield r

    def iter_blocks(
        self, start_s: float = -math.inf, end_s: float = math.inf
    ) -> Iterator[list[Request]]:
        """`iter_window(start_s, end_s)` in lists of consecutive requests.

        Same requests, same order; never an empty list. For consumers that
        handle many requests per call (the simulator): sources that generate
        in blocks (the synthetic ones) override it and skip the per-request
        generator steps. The default batches `iter_window`.
        """
        whole = start_s == -math.inf and end_s == math.inf
        return batched(self if whole else self.iter_window(start_s, end_s))

    def duration_hint(self) -> float | None:
        """The workload's nominal length in seconds when known without a pass."""
        return None

    def rate_hint(self) -> float | None:
        """The nominal mean arrival rate (req/s) when known without a pass."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe()}>"


def batched(requests: Iterable[Request]) -> Iterator[list[Request]]:
    """Consecutive requests in non-empty lists of 16, 32, ... up to 1,024."""
    it = iter(requests)
    size = 16
    while True:
        block = list(itertools.islice(it, size))
        if not block:
            return
        yield block
        if size < 1024:
            size *= 2


def where(path: Path | str, line: int | None = None) -> str:
    """`path:line` for error messages."""
    return f"{path}:{line}" if line is not None else str(path)


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """Validate a finite positive (or non-negative) number, else WorkloadError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise WorkloadError(f"{name} must be a number, got {value!r}") from None
    ok = math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise WorkloadError(f"{name} must be a finite number {bound}, got {value!r}")
    return v
