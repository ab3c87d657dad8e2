"""The adaptive threshold controller: bounded, rate-limited, hysteretic, safe when blind."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpool.errors import ConfigError
from dualpool.policy import AdaptiveConfig, PoolPolicy, PoolSignal, PoolSpec, ThresholdController

CFG = AdaptiveConfig(interval_s=10.0, stale_s=30.0, revert_s=60.0)


def ctl(base: int = 6000, mml: int = 8192) -> ThresholdController:
    c = ThresholdController(CFG, base, mml)
    for b in range(100, 16000, 8):  # a spread of recent budgets
        c.observe_budget(b)
    return c


def sig(t: float, q: float = 0.0, kv: float = 0.2, slo: float | None = None) -> PoolSignal:
    return PoolSignal(t, q, kv, slo)


def test_holds_inside_the_band() -> None:
    c = ctl()
    assert c.update(0.0, sig(0.0, kv=0.5), sig(0.0, kv=0.45)) == 6000
    assert c.reason == "hold"


def test_short_overloaded_moves_down_by_a_bounded_step_and_rate_limited() -> None:
    c = ctl()
    t1 = c.update(0.0, sig(0.0, q=8.0), sig(0.0))
    assert c.reason == "down" and t1 < 6000 and t1 >= 6000 / CFG.max_step_ratio
    # Within the interval nothing moves, whatever the signals say.
    assert c.update(5.0, sig(5.0, q=80.0), sig(5.0)) == t1
    t2 = c.update(10.0, sig(10.0, q=8.0), sig(10.0))
    assert t2 < t1
    for k in range(200):
        c.update(20.0 + 10 * k, sig(20.0 + 10 * k, q=8.0), sig(20.0 + 10 * k))
    assert c.threshold == c.lo == int(CFG.min_fraction * 8192)


def test_long_overloaded_moves_up_never_past_max_model_len() -> None:
    c = ctl()
    for k in range(200):
        c.update(10.0 * k, sig(10.0 * k), sig(10.0 * k, kv=0.99, slo=0.9))
    assert c.threshold == 8192 and c.reason in ("up", "hold")


def test_both_overloaded_holds() -> None:
    c = ctl()
    c.update(0.0, sig(0.0, q=20.0), sig(0.0, q=5.0))
    assert c.reason == "hold" and c.threshold == 6000


def test_stale_or_missing_signals_hold_then_revert_to_the_static_threshold() -> None:
    c = ctl()
    for k in range(5):
        c.update(10.0 * k, sig(10.0 * k, q=8.0), sig(10.0 * k))
    moved = c.threshold
    assert moved < 6000
    # Signals stop (the last ones grow old): hold first...
    assert c.update(60.0, sig(40.0, q=8.0), None) == moved and c.reason == "stale"
    # ...then step back, bounded, until the static threshold.
    seen = [moved]
    for k in range(50):
        seen.append(c.update(110.0 + 10 * k, None, None))
    assert seen[-1] == 6000
    assert all(b >= a for a, b in itertools.pairwise(seen))
    assert all(b <= a * CFG.max_step_ratio + 1 for a, b in itertools.pairwise(seen))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 30),
            st.floats(0, 1.2),
            st.floats(0, 30),
            st.floats(0, 1.2),
            st.booleans(),
            st.floats(0.5, 40.0),
        ),
        min_size=1,
        max_size=80,
    )
)
def test_any_signal_sequence_keeps_the_invariants(steps: list[tuple[float, ...]]) -> None:
    c = ctl()
    now = 0.0
    last = c.threshold
    last_move = -1e9
    for qs, ks, ql, kl, fresh, dt in steps:
        now += dt
        at = now if fresh else now - 100.0
        t = c.update(now, PoolSignal(at, qs, ks), PoolSignal(at, ql, kl))
        assert c.lo <= t <= 8192
        if t != last:
            assert now - last_move >= CFG.interval_s
            assert t <= last * CFG.max_step_ratio + 1 and t >= last / CFG.max_step_ratio - 1
            last_move = now
        last = t


def test_relief_ends_and_the_threshold_returns_to_the_planned_one() -> None:
    c = ctl()
    for k in range(4):
        c.update(10.0 * k, sig(10.0 * k, q=8.0), sig(10.0 * k))
    assert c.threshold < 6000
    # The short pool is clear of its limit by more than the band: back to the plan,
    # after reverse_after votes, by bounded steps, never past it.
    seen = []
    for k in range(4, 80):
        seen.append(c.update(10.0 * k, sig(10.0 * k, kv=0.3), sig(10.0 * k)))
    assert seen[-1] == 6000 and max(seen) == 6000
    assert c.reason == "hold"


def test_relief_ends_at_once_when_the_receiving_pool_reaches_its_limit() -> None:
    c = ctl()
    for k in range(4):
        c.update(10.0 * k, sig(10.0 * k, q=8.0), sig(10.0 * k))
    low = c.threshold
    for k in range(4, 40):
        c.update(10.0 * k, sig(10.0 * k, q=8.0), sig(10.0 * k, q=8.0))
    assert c.threshold > low and c.threshold <= 6000


def test_a_pool_serving_few_requests_is_not_relieved_at_the_many_s_expense() -> None:
    # The long pool at its limit serves 2% of requests; the short one, busy but
    # within headroom, serves 98%: the fleet's misses are the short pool's to lose.
    c = ThresholdController(CFG, 8000, 16384)
    for i in range(4000):
        c.observe_budget(500 + (i % 98) * 70 if i % 50 else 12000)
    assert c.shares()[1] < 0.05
    for k in range(20):
        c.update(10.0 * k, sig(10.0 * k, kv=0.55), sig(10.0 * k, q=8.0))
    assert c.threshold == 8000 and c.reason == "hold"


def test_slow_decode_steps_count_as_pressure() -> None:
    c = ctl()
    s = PoolSignal(0.0, 0.0, 0.2, None, 0.2, tpot_ratio=1.3)
    assert c.pressure(s, 0.0) == pytest.approx(1.3)
    c.update(0.0, s, sig(0.0))
    assert c.reason == "down"


def test_a_move_shifts_at_most_step_work_of_the_receiving_pool() -> None:
    # Recent budgets: 1,000 requests at 1K-7K (short) and 50 at 9K (long). Relieving
    # the short pool may add at most step_work of the long pool's 450K tokens.
    c = ThresholdController(CFG, 8000, 8192)
    for i in range(1000):
        c.observe_budget(1000 + 6 * i)
    for _ in range(50):
        c.observe_budget(9000)
    c.update(0.0, sig(0.0, q=8.0), sig(0.0))
    moved = [1000 + 6 * i for i in range(1000) if c.threshold < 1000 + 6 * i <= 8000]
    assert moved and sum(moved) <= CFG.step_work * 50 * 9000


def test_config_is_checked_and_named() -> None:
    with pytest.raises(ConfigError, match=r"routing\.adaptive\.step_share"):
        AdaptiveConfig(step_share=0.0)
    with pytest.raises(ConfigError, match=r"routing\.adaptive\.headroom"):
        AdaptiveConfig(headroom=1.5)
    with pytest.raises(ConfigError, match=r"routing\.adaptive\.bogus"):
        AdaptiveConfig.from_mapping({"bogus": 1})
    assert AdaptiveConfig.from_mapping(True) == AdaptiveConfig()


def test_policy_set_threshold_keeps_the_rules() -> None:
    pol = PoolPolicy([PoolSpec("short", 8192, 6000), PoolSpec("long", 65536)])
    pol.set_threshold(0, 7000)
    assert pol.route(6500).pool == 0 and pol.pools[0].effective_threshold == 7000
    with pytest.raises(ConfigError):
        pol.set_threshold(0, 9000)  # above the short pool's max_model_len
    with pytest.raises(ConfigError):
        pol.set_threshold(1, 60000)  # the largest pool's threshold is its length
