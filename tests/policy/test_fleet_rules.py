"""dualpool.fleet: the rules the gateway and the simulator share."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from dualpool.fleet import SCAN, misroute_target, over_limits, pick_least_loaded
from dualpool.simulator.balancer import GatewayPicker, make_balancer


@given(st.lists(st.floats(0, 100), min_size=1, max_size=SCAN))
def test_small_pools_get_the_least_loaded_lowest_index(loads: list[float]) -> None:
    i = pick_least_loaded(len(loads), loads.__getitem__)
    assert loads[i] == min(loads) and i == loads.index(min(loads))


@given(st.lists(st.floats(0, 100), min_size=1, max_size=40), st.data())
def test_a_retry_scans_and_never_picks_an_excluded_one(
    loads: list[float], data: st.DataObject
) -> None:
    exclude = data.draw(st.lists(st.integers(0, len(loads) - 1), unique=True, min_size=1))
    i = pick_least_loaded(len(loads), loads.__getitem__, exclude)
    rest = [x for j, x in enumerate(loads) if j not in exclude]
    if not rest:
        assert i == -1
    else:
        assert i not in exclude and loads[i] == min(rest)


@given(st.lists(st.floats(0, 100), min_size=SCAN + 1, max_size=64), st.integers(0, 2**32))
def test_large_pools_pick_the_lighter_of_two(loads: list[float], seed: int) -> None:
    rng = random.Random(seed)
    twin = random.Random(seed)
    i = pick_least_loaded(len(loads), loads.__getitem__, (), rng)
    a, b = twin.randrange(len(loads)), twin.randrange(len(loads))
    assert i in (a, b) and loads[i] == min(loads[a], loads[b])


def test_saturation_rule_is_strictly_past_the_limits() -> None:
    assert not over_limits(16, 0.5, 16, 0.97)
    assert over_limits(17, 0.5, 16, 0.97)
    assert over_limits(0, 0.98, 16, 0.97)


def test_misroute_retry_is_once_and_to_the_next_larger_pool() -> None:
    assert misroute_target((2, 3), False) == 2
    assert misroute_target((2, 3), True) == -1
    assert misroute_target((), False) == -1


def test_the_simulator_can_use_the_gateways_picker() -> None:
    class Load:
        def __init__(self, n: int) -> None:
            self.outstanding = n
            self.kv_usage = 0.0

    b = make_balancer("gw", [Load(3), Load(1), Load(2)])
    assert isinstance(b, GatewayPicker) and b.pick() == 1
