"""Student-t intervals, the one-sided test, the provisioned count over windows."""

from __future__ import annotations

import math
import random

import pytest

from dualpool.planner import PoolSim, WindowOutcome, interval, one_sided_confidence
from dualpool.planner._replicate import provision
from dualpool.planner._stats import t_cdf, t_quantile


def test_t_table_values() -> None:
    # Two-sided 95% critical values (standard tables).
    for df, t in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (19, 2.093), (120, 1.980)):
        assert t_quantile(0.975, df) == pytest.approx(t, abs=2e-3)
    assert t_cdf(0.0, 5) == pytest.approx(0.5)
    assert t_cdf(2.015, 5) == pytest.approx(0.95, abs=1e-3)


def test_interval_and_coverage() -> None:
    iv = interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert iv.mean == 3.0
    assert iv.half_width == pytest.approx(2.776 * math.sqrt(2.5 / 5), abs=1e-3)
    assert interval([1.0]).half_width == math.inf
    # Coverage of the true mean close to 95% over many normal samples of 5.
    rng = random.Random(7)
    hits = sum(interval([rng.gauss(10, 3) for _ in range(5)]).contains(10.0) for _ in range(2000))
    assert 0.93 <= hits / 2000 <= 0.97


def test_one_sided_confidence() -> None:
    assert one_sided_confidence([-1.0, -1.2, -0.9, -1.1]) > 0.999
    assert one_sided_confidence([1.0, 1.2, 0.9]) < 0.01
    assert 0.3 < one_sided_confidence([-0.1, 0.1, -0.05, 0.05]) < 0.7


def _window(w: int, threshold: float) -> WindowOutcome:
    """Trials of a window whose SLO ratio is threshold / g (crosses 1 at g = threshold)."""
    trials = tuple(
        PoolSim(g, g, 100, 0.1, 2.0 * threshold / g, 0.01, 0.02, 0.0, 0, 0.5, g >= threshold, False)
        for g in (80, 90, 95, 100, 105, 110, 120)
    )
    return WindowOutcome("short", w, threshold, 100, True, trials)


def test_provision_takes_the_spread_into_account() -> None:
    tight = [_window(w, 99.0 + 0.1 * w) for w in range(5)]
    loose = [_window(w, t) for w, t in enumerate((90.0, 95.0, 100.0, 105.0, 110.0))]
    g_tight = provision(tight, 2.0, 0.08, 0.95)
    g_loose = provision(loose, 2.0, 0.08, 0.95)
    assert 99 <= g_tight <= 101
    # Same mean, more spread between windows: more instances for 95%.
    assert g_loose > g_tight
    assert g_loose <= 120


def test_provision_reads_probed_windows_with_their_slope() -> None:
    """Windows probed at one count (ratio threshold / g there, slope 1): same answer as searched."""
    thresholds = (95.0, 98.0, 100.0, 102.0, 105.0)
    searched = [_window(w, t) for w, t in enumerate(thresholds)]
    probed = [
        WindowOutcome(
            "short",
            w,
            t,
            100,
            True,
            (PoolSim(100, 100, 100, 0.1, 2.0 * t / 100, 0.01, 0.02, 0.0, 0, 0.5, t <= 100, False),),
            slope=1.0,
        )
        for w, t in enumerate(thresholds)
    ]
    g_searched = provision(searched, 2.0, 0.08, 0.95)
    g_probed = provision(searched[:2] + probed[2:], 2.0, 0.08, 0.95)
    assert 100 < g_searched <= 110
    assert abs(g_probed - g_searched) <= 1
