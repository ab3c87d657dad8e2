from __future__ import annotations

from dataclasses import dataclass

import pytest

from dualpool.errors import ConfigError
from dualpool.simulator import LeastKV, LeastOutstanding, RoundRobin, make_balancer


@dataclass
class Load:
    outstanding: int = 0
    kv_usage: float = 0.0


def test_round_robin_cycles() -> None:
    b = make_balancer("rr", [Load(), Load(), Load()])
    assert isinstance(b, RoundRobin)
    assert [b.pick() for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_least_outstanding_follows_updates() -> None:
    loads = [Load(3), Load(1), Load(2)]
    b = make_balancer("lor", loads)
    assert isinstance(b, LeastOutstanding)
    assert b.pick() == 1
    loads[1].outstanding = 5
    b.update(1)
    assert b.pick() == 2
    loads[0].outstanding = 0
    b.update(0)
    assert b.pick() == 0
    for _ in range(1000):  # stale entries are compacted
        b.update(0)
    assert len(b._heap) <= 4 * 3 + 64 + 1


def test_least_kv_and_ties() -> None:
    loads = [Load(0, 0.5), Load(9, 0.1), Load(0, 0.1)]
    b = make_balancer("least-kv", loads)
    assert isinstance(b, LeastKV)
    assert b.pick() == 2  # equal usage: fewer outstanding
    assert make_balancer("lor", [Load(), Load()]).pick() == 0  # ties: lowest index


def test_unknown_balancer() -> None:
    with pytest.raises(ConfigError, match="balancer"):
        make_balancer("random", [Load()])
