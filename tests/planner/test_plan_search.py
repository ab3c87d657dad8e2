"""The simulation search and the sweep summary, on stand-in evaluators."""

from __future__ import annotations

import math

import pytest

from dualpool.planner import PoolSim, search_pool_size
from dualpool.planner._plan import _sweep_summary


def fake(threshold: int, calls: list[tuple[int, bool]]):  # type: ignore[no-untyped-def]
    """Meets the SLO from `threshold` instances up; far below it, the prefix fails loudly."""

    def evaluate(g: int, prefix: bool) -> PoolSim:
        calls.append((g, prefix))
        ok = g >= threshold
        ttft = 1.0 if ok else (10.0 if g < threshold * 0.8 else 2.5)
        return PoolSim(g, min(g, 4), 100, 0.1, ttft, 0.02, 0.05, 0.0, 0, 0.5, ok, prefix)

    return evaluate


def test_search_from_below_and_above() -> None:
    for start in (10, 50, 200, 1000):
        calls: list[tuple[int, bool]] = []
        r = search_pool_size("short", start, fake(137, calls), ttft_slo=2.0, tolerance=0.0)
        assert r.found
        assert r.instances == 137
        assert r.chosen.instances == 137 and not r.chosen.early_stop
        # Counts far below the answer stop after the prefix.
        assert any(prefix for g, prefix in calls if g < 100) or start >= 137


def test_search_tolerance_and_repeatability() -> None:
    a = search_pool_size("s", 100, fake(137, []), ttft_slo=2.0, tolerance=0.02)
    b = search_pool_size("s", 100, fake(137, []), ttft_slo=2.0, tolerance=0.02)
    assert 137 <= a.instances <= math.ceil(137 * 1.03)
    assert [t.instances for t in a.trials] == [t.instances for t in b.trials]


def test_search_gives_up_past_the_limit() -> None:
    r = search_pool_size("s", 4, fake(10**9, []), ttft_slo=2.0, limit=100)
    assert not r.found


def test_sweep_best_and_80_percent_range() -> None:
    rows = [
        {"b_short": b, "saving": s, "analytic_saving": s, "errors": []}
        for b, s in ((2048, 0.10), (4096, 0.33), (8192, 0.40), (16384, 0.35), (32768, 0.20))
    ]
    out = _sweep_summary(rows, verified=True)
    assert out["best"] == {"b_short": 8192, "saving": 0.40}
    # 80% of 0.40 is 0.32: 4096 (0.33) .. 16384 (0.35) keep it.
    assert out["range_80"] == [4096, 16384]


# -- a noisy verdict: the search stays inside the noise band --------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(
    t1=st.integers(1, 400),
    band=st.integers(0, 60),
    start=st.integers(1, 900),
    seed=st.integers(0, 2**32 - 1),
)
def test_search_is_monotone_under_noise(t1: int, band: int, start: int, seed: int) -> None:
    """Fails below t1, passes from t2 = t1 + band up, coin flips in between."""
    import random

    rng = random.Random(seed)
    t2 = t1 + band
    flips: dict[int, bool] = {}

    def evaluate(g: int, prefix: bool) -> PoolSim:
        if g not in flips:
            flips[g] = g >= t2 or (g >= t1 and rng.random() < 0.5)
        ok = flips[g]
        return PoolSim(g, g, 100, 0.1, 1.0 if ok else 2.5, 0.02, 0.05, 0.0, 0, 0.5, ok, prefix)

    r = search_pool_size("s", start, evaluate, ttft_slo=2.0, tolerance=0.02, limit=4096)
    assert r.found
    assert t1 <= r.instances <= max(t2, math.floor(t2 + 0.02 * t2) + 1)
    # What the search saw is consistent with more instances never hurting:
    # every count tried at or above the answer passed.
    assert all(t.meets for t in r.trials if t.instances >= r.instances)
    assert r.chosen.meets


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 500), st.floats(0.05, 20.0)), min_size=1, max_size=12))
def test_envelope_never_rises_with_instances(trials: list[tuple[int, float]]) -> None:
    import numpy as np

    from dualpool.planner._windows import envelope_log_ratio

    counts = np.arange(1, 520, dtype=np.int64)
    lr = envelope_log_ratio(trials, counts)
    finite = lr[np.isfinite(lr)]
    assert np.all(np.diff(finite) <= 1e-12)
    # Conservative: never below what any trial at or above a count showed.
    for g, r in trials:
        assert lr[g - 1] >= math.log(r) - 1e-9


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 500), st.floats(0.05, 20.0)), min_size=1, max_size=12),
    st.floats(0.3, 5.0),
)
def test_envelope_with_a_slope_never_rises_and_extrapolates(
    trials: list[tuple[int, float]], slope: float
) -> None:
    """A probed window's envelope: monotone, finite everywhere, the slope past its trials."""
    import numpy as np

    from dualpool.planner._windows import envelope_log_ratio

    counts = np.arange(1, 1040, dtype=np.int64)
    lr = envelope_log_ratio(trials, counts, slope)
    assert np.all(np.isfinite(lr))
    assert np.all(np.diff(lr) <= 1e-9)
    for g, r in trials:
        assert lr[g - 1] >= math.log(r) - 1e-9
    top = max(g for g, _ in trials)
    if top < 1000:
        # Past the largest trial, log r falls by `slope` per unit of log count.
        assert lr[999] - lr[top - 1] == pytest.approx(-slope * math.log(1000 / top), abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(
    st.floats(0.3, 5.0),
    st.lists(st.floats(-0.5, 0.5), min_size=2, max_size=8),
)
def test_pooled_slope_recovers_the_elasticity_across_window_levels(
    slope: float, levels: list[float]
) -> None:
    """Windows differ in level (log r at a count), not in slope: the pooled fit finds it."""
    from dualpool.planner._windows import pooled_slope

    windows, centers = [], []
    for a in levels:
        c = 100.0 * math.exp(a / slope)  # where log r = a - slope log(g / 100) crosses 0
        gs = (round(c * 0.95), round(c), round(c * 1.05))
        windows.append([(g, math.exp(a - slope * math.log(g / 100.0))) for g in gs])
        centers.append(c)
    got = pooled_slope(windows, centers)
    assert got == pytest.approx(slope, rel=1e-6)
    # One window, or only one count per window: no estimate.
    assert pooled_slope(windows[:1], centers[:1]) is None
    assert pooled_slope([w[:1] for w in windows], centers) is None
