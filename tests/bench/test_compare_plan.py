"""The A/B's prediction (`dualpool.compare_plan`): intervals, verdicts, the replay's end."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dualpool.compare import CompareSettings
from dualpool.compare_plan import (
    ArmFigures,
    PoolPlan,
    Prediction,
    _prediction_interval,
    figures,
    simulate_arm,
    windows_of,
)
from dualpool.workload import Request


def test_figures_leave_unfinished_requests_out_of_the_percentiles() -> None:
    f = figures([0.5, 1.0, None, 3.0], [0.05, 0.09, None, 0.01], 2.0, 0.08)
    # good: the first only (the second misses TPOT, the third never finished,
    # the fourth misses TTFT)
    assert f.goodput == pytest.approx(0.25)
    assert f.ttft_p99_s < 3.0 + 1e-9 and f.ttft_p99_s > 2.9
    assert figures([None], [None], 2.0, 0.08).ttft_p99_s == math.inf


@given(st.lists(st.floats(-100, 100), min_size=2, max_size=30))
def test_a_prediction_interval_holds_the_mean_and_is_wider_than_the_mean_s(
    xs: list[float],
) -> None:
    lo, hi = _prediction_interval(xs, 0.9)
    m = sum(xs) / len(xs)
    assert lo <= m + 1e-9 and m <= hi + 1e-9


def test_a_prediction_interval_needs_two_finite_values() -> None:
    assert all(math.isnan(x) for x in _prediction_interval([1.0], 0.9))
    assert all(math.isnan(x) for x in _prediction_interval([1.0, math.inf], 0.9))


def _pred(h: list[tuple[float, float]], s: list[tuple[float, float]]) -> Prediction:
    return Prediction(
        {
            "homogeneous": [ArmFigures(g, t, 0.05) for g, t in h],
            "split": [ArmFigures(g, t, 0.05) for g, t in s],
        }
    )


def test_the_verdict_needs_more_goodput_and_a_lower_p99_ttft_on_the_replay() -> None:
    ahead = _pred([(0.6, 15.0), (0.5, 20.0)], [(0.98, 1.2), (0.99, 1.0)])
    assert ahead.split_ahead()
    assert ahead.diff("goodput") == pytest.approx(0.38)
    lo, hi = ahead.diff_range("ttft_p99_s")
    assert lo <= ahead.diff("ttft_p99_s") <= hi or hi < 0
    # more goodput, but a worse tail: not ahead
    assert not _pred([(0.3, 20.0), (0.3, 20.0)], [(0.6, 27.0), (0.6, 27.0)]).split_ahead()
    # window 0 (the replayed requests) decides, the others make the interval
    assert not _pred([(0.9, 1.0), (0.1, 50.0)], [(0.8, 2.0), (0.9, 1.0)]).split_ahead()


def test_goodput_ranges_stay_within_zero_and_one() -> None:
    p = _pred([(0.0, 1.0), (1.0, 1.0), (0.5, 1.0)], [(0.5, 1.0)] * 3)
    lo, hi = p.range("homogeneous", "goodput")
    assert lo >= 0.0 and hi <= 1.0


def test_windows_are_disjoint_blocks_from_zero_and_the_first_is_the_replay() -> None:
    first = [Request(0.1 * i, 100, 10, None) for i in range(50)]
    wins = windows_of("lmsys-like", 5.0, 50, 4, first)
    assert len(wins) == 4 and wins[0] is first
    assert all(len(w) == 50 and w[0].arrival_s == 0.0 for w in wins[1:])


def test_the_simulated_replay_stops_where_the_replay_stops() -> None:
    # One instance, requests whose outputs take minutes: a 10 s limit at
    # speedup 1 aborts what has not finished by then.
    s = CompareSettings(workload="azure-conv-like", requests=10, speedup=1.0, max_time_s=10.0)
    pool = PoolPlan("homogeneous", (65536, 16, 8192), 4, 1, 1.0, 1.0)
    reqs = [Request(0.0, 200, 20, None), Request(0.5, 200, 5000, None)]
    f = simulate_arm(s, [pool], reqs)
    assert f.goodput == pytest.approx(0.5)
    long_limit = CompareSettings(workload="azure-conv-like", requests=10, max_time_s=1000.0)
    assert simulate_arm(long_limit, [pool], reqs).goodput > 0.5
