from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    loads[0].outstanding = 7
    b.update(0)
    assert b.pick() == 2


def test_least_kv_and_ties() -> None:
    loads = [Load(0, 0.5), Load(9, 0.1), Load(0, 0.1)]
    b = make_balancer("least-kv", loads)
    assert isinstance(b, LeastKV)
    assert b.pick() == 2  # equal usage: fewer outstanding
    assert make_balancer("lor", [Load(), Load()]).pick() == 0  # ties: lowest index


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    ops=st.lists(
        st.tuples(st.integers(0, 39), st.integers(0, 6), st.sampled_from([0.0, 0.25, 0.5])),
        max_size=200,
    ),
)
def test_least_by_matches_a_scan(n: int, ops: list[tuple[int, int, float]]) -> None:
    # The tournament tree picks what a scan of the pool would: the smallest key,
    # the lowest index among equal keys (through both update paths).
    loads = [Load() for _ in range(n)]
    lor = make_balancer("lor", loads)
    kv = make_balancer("kv", loads)
    for step, (i, out, usage) in enumerate(ops):
        i %= n
        loads[i].outstanding, loads[i].kv_usage = out, usage
        if step % 2:
            lor.update(i)
            kv.update(i)
        else:
            lor.update_load(i, out, usage)
            kv.update_load(i, out, usage)
        assert lor.pick() == min(range(n), key=lambda j: (loads[j].outstanding, j))
        assert kv.pick() == min(
            range(n), key=lambda j: (loads[j].kv_usage, loads[j].outstanding, j)
        )


def test_unknown_balancer() -> None:
    with pytest.raises(ConfigError, match="balancer"):
        make_balancer("random", [Load()])
