"""Intra-pool balancing: which instance of a pool gets a request.

    BalancerKind (enum)  ──►  make_balancer(name, loads)  ──►  Balancer
                                                         ├── RoundRobin
                                                         ├── LeastOutstanding   ("lor")
                                                         └── LeastKV            ("kv")

A balancer sees each instance through `InstanceLoad` (outstanding requests,
KV usage at the instance's last step boundary). The simulator calls
`update(i)` whenever instance i's load changed, so least-load balancers keep
a heap and pick in O(log n) instead of scanning the pool: the cost of a
simulation must not grow with the fleet size. Ties go to the lowest index.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol

from dualpool.errors import ConfigError

__all__ = [
    "Balancer",
    "BalancerKind",
    "InstanceLoad",
    "LeastKV",
    "LeastOutstanding",
    "RoundRobin",
    "make_balancer",
]


class InstanceLoad(Protocol):
    """What a balancer may read about an instance."""

    @property
    def outstanding(self) -> int:
        """Requests queued or running."""
        ...

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks in use (0..1)."""
        ...


class BalancerKind(enum.StrEnum):
    ROUND_ROBIN = "rr"
    LEAST_OUTSTANDING = "lor"
    LEAST_KV = "kv"


# Accepted spellings of each kind on the command line.
_ALIASES: dict[str, BalancerKind] = {
    "rr": BalancerKind.ROUND_ROBIN,
    "round_robin": BalancerKind.ROUND_ROBIN,
    "round-robin": BalancerKind.ROUND_ROBIN,
    "lor": BalancerKind.LEAST_OUTSTANDING,
    "least_outstanding": BalancerKind.LEAST_OUTSTANDING,
    "least-outstanding": BalancerKind.LEAST_OUTSTANDING,
    "kv": BalancerKind.LEAST_KV,
    "least_kv": BalancerKind.LEAST_KV,
    "least-kv": BalancerKind.LEAST_KV,
}


class Balancer(ABC):
    """Chooses an instance index in [0, len(loads)); same signature for every policy."""

    kind: BalancerKind

    def __init__(self, loads: Sequence[InstanceLoad]) -> None:
        if not loads:
            raise ConfigError("instances", "a pool needs at least one instance")
        self.loads = loads

    @abstractmethod
    def pick(self) -> int:
        """The instance for the next request."""

    def update_load(self, index: int, outstanding: int, kv_usage: float) -> None:
        """`update(index)` when the caller already has the instance's load at hand."""
        self.update(index)

    def update(self, index: int) -> None:  # noqa: B027 (a no-op default is the point)
        """Instance `index`'s load changed (called by the simulator)."""


class RoundRobin(Balancer):
    """Each instance in turn, whatever its load."""

    kind = BalancerKind.ROUND_ROBIN

    def __init__(self, loads: Sequence[InstanceLoad]) -> None:
        super().__init__(loads)
        self._cycle = itertools.cycle(range(len(loads)))

    def pick(self) -> int:
        return next(self._cycle)


class _LeastBy(Balancer):
    """The instance with the smallest key, via a heap with lazy invalidation.

    Every update pushes (key, index, version); entries whose version is old
    are dropped when they reach the top. The heap is rebuilt when stale
    entries outnumber live ones 4 to 1, so it stays O(n) in size.
    """

    def __init__(self, loads: Sequence[InstanceLoad]) -> None:
        super().__init__(loads)
        n = len(loads)
        self._version = [0] * n
        # Each instance's key in its live heap entry: an update that leaves it
        # unchanged pushes nothing (the live entry already says the same).
        self._keys = [self._key(i) for i in range(n)]
        self._heap: list[tuple[float, int, int]] = [(self._keys[i], i, 0) for i in range(n)]
        heapq.heapify(self._heap)

    @abstractmethod
    def _key(self, index: int) -> float: ...

    def update(self, index: int) -> None:
        key = self._key(index)
        if key != self._keys[index]:
            self._set(index, key)

    def _set(self, index: int, key: float) -> None:
        self._keys[index] = key
        v = self._version[index] + 1
        self._version[index] = v
        heap = self._heap
        heapq.heappush(heap, (key, index, v))
        if len(heap) > 4 * len(self._version) + 64:
            self._keys = [self._key(i) for i in range(len(self._version))]
            self._heap = [(self._keys[i], i, self._version[i]) for i in range(len(self._version))]
            heapq.heapify(self._heap)

    def pick(self) -> int:
        heap = self._heap
        version = self._version
        while True:
            _, i, v = heap[0]
            if v == version[i]:
                return i
            heapq.heappop(heap)


class LeastOutstanding(_LeastBy):
    """Fewest requests queued or running (least outstanding requests)."""

    kind = BalancerKind.LEAST_OUTSTANDING

    def _key(self, index: int) -> float:
        return self.loads[index].outstanding

    def update_load(self, index: int, outstanding: int, kv_usage: float) -> None:
        if outstanding != self._keys[index]:
            self._set(index, outstanding)


class LeastKV(_LeastBy):
    """Lowest KV-cache usage, then fewest outstanding requests."""

    kind = BalancerKind.LEAST_KV

    def _key(self, index: int) -> float:
        load = self.loads[index]
        # usage dominates; outstanding breaks ties between equally empty caches
        return load.kv_usage * 1e6 + load.outstanding

    def update_load(self, index: int, outstanding: int, kv_usage: float) -> None:
        key = kv_usage * 1e6 + outstanding
        if key != self._keys[index]:
            self._set(index, key)


_REGISTRY: dict[BalancerKind, type[Balancer]] = {
    BalancerKind.ROUND_ROBIN: RoundRobin,
    BalancerKind.LEAST_OUTSTANDING: LeastOutstanding,
    BalancerKind.LEAST_KV: LeastKV,
}


def parse_balancer(name: str | BalancerKind) -> BalancerKind:
    if isinstance(name, BalancerKind):
        return name
    kind = _ALIASES.get(str(name).strip().lower())
    if kind is None:
        raise ConfigError(
            "balancer",
            f"unknown balancer {name!r}; choose rr (round robin), lor (least outstanding "
            "requests) or kv (least KV usage)",
        )
    return kind


def make_balancer(name: str | BalancerKind, loads: Sequence[InstanceLoad]) -> Balancer:
    """The balancer named `name` (rr, lor, kv or their long names) over `loads`."""
    return _REGISTRY[parse_balancer(name)](loads)
