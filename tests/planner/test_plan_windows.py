"""Windows of the workload: common random numbers, the seed, whole pools, monotone in G."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from dualpool.planner import Mix, PlanSettings, PoolDesign, WindowJob
from dualpool.planner._plan import DEFAULT_LONG, DEFAULT_SHORT
from dualpool.planner._replicate import window_plan
from dualpool.planner._windows import ratio, simulate_whole_pool, window_stream


def _job(mix: Mix, s: PlanSettings, lo: int, hi: int, seed: int = 0, w: int = 0) -> WindowJob:
    wp = window_plan(
        len(mix), s.rate, seed=seed, warmup_s=2.0, measure_s=5.0, min_measured=300, block=None
    )
    engine = DEFAULT_SHORT if hi <= 8192 else DEFAULT_LONG
    return WindowJob(
        key="k",
        design=PoolDesign("p", dataclasses.replace(engine, tensor_parallel_size=1)),
        model=s.model,
        gpu=s.gpu,
        arrival_s=mix.arrival_s,
        prompt=mix.prompt,
        output=mix.output,
        budget=mix.budget,
        source_rate=mix.source_rate,
        lo=lo,
        hi=hi,
        window=w,
        plan=wp,
        start=2,
        ttft_slo_s=2.0,
        tpot_slo_s=0.08,
        step_params=None,
    )


def test_pools_see_the_same_requests_at_the_same_times(
    small_mix: Mix, small_settings: PlanSettings
) -> None:
    homo = _job(small_mix, small_settings, 0, 65536).requests()
    short = _job(small_mix, small_settings, 0, 8192).requests()
    long = _job(small_mix, small_settings, 8192, 65536).requests()
    assert long, "the small mix has long requests"

    def key(rs: list) -> list:  # type: ignore[type-arg]
        return sorted((r.arrival_s, r.prompt_tokens, r.output_tokens) for r in rs)

    assert key(short + long) == key(homo)


def test_window_stream_is_at_the_fleet_rate_and_seeded(
    small_mix: Mix, small_settings: PlanSettings
) -> None:
    wp = _job(small_mix, small_settings, 0, 65536).plan
    t, idx = window_stream(small_mix.arrival_s, small_mix.source_rate, wp, 0)
    assert t[0] == 0.0 and np.all(np.diff(t) >= 0)
    assert len(t) == wp.run_requests
    # The block is retimed to the fleet's rate.
    assert (len(t) - 1) / t[-1] == pytest.approx(small_settings.rate, rel=0.05)
    # A small input: every window is all of it, rotated; never the same rotation.
    assert wp.block == wp.n == len(small_mix)
    assert len({wp.offset(w) for w in range(20)}) == 20
    # Blocks smaller than the input: disjoint windows a block apart first.
    part = dataclasses.replace(wp, block=500)
    assert [part.offset(w) for w in range(5)] == [(wp.phase + 500 * w) % wp.n for w in range(5)]
    assert len({part.offset(w) for w in range(20)}) == 20
    # Another seed, other windows.
    other = _job(small_mix, small_settings, 0, 65536, seed=1).plan
    assert other.offset(0) != wp.offset(0)
    _, idx1 = window_stream(small_mix.arrival_s, small_mix.source_rate, other, 0)
    assert not np.array_equal(idx, idx1)


def test_more_instances_never_hurt_beyond_noise(
    small_mix: Mix, small_settings: PlanSettings
) -> None:
    """The real simulator, one window, counts 1..5 of a whole pool: the SLO ratio falls."""
    job = _job(small_mix, small_settings, 0, 8192)
    reqs = job.requests()
    rs = []
    for g in range(1, 6):
        sim = simulate_whole_pool(
            job.model,
            job.gpu,
            job.design,
            g,
            reqs,
            warmup_s=2.0,
            ttft_slo=2.0,
            tpot_slo=0.02,
            step_params=None,
        )
        assert sim.simulated_instances == g  # the whole pool, not a sub-fleet
        rs.append(ratio(sim, 2.0, 0.02))
    for a, b in itertools.pairwise(rs):
        assert b <= a * 1.05, rs
    assert rs[-1] < rs[0]


def test_a_probe_runs_one_count_and_reads_the_crossing_with_the_slope(
    small_mix: Mix, small_settings: PlanSettings
) -> None:
    """Near the crossing a probe is one run; far from it the window is searched."""
    import math

    from dualpool.planner._windows import run_window

    base = dataclasses.replace(_job(small_mix, small_settings, 0, 8192), tpot_slo_s=0.02)
    searched = run_window(base)
    assert searched.slope is None and len(searched.trials) > 1
    g = searched.instances
    at = next(t for t in searched.trials if t.instances == g and not t.early_stop)
    r = ratio(at, 2.0, 0.02)
    probe = run_window(
        dataclasses.replace(base, start=g, slope=1.5, probe_band=abs(math.log(r)) + 0.01)
    )
    assert len(probe.trials) == 1 and probe.slope == 1.5
    assert probe.trials[0].instances == g
    assert probe.crossing == pytest.approx(g * r ** (1 / 1.5))
    # The same window, run once more at the same count: the same ratio (common random numbers).
    assert ratio(probe.trials[0], 2.0, 0.02) == pytest.approx(r)
    # Out of the band: searched from the probe's count, the probe's run reused.
    far = run_window(dataclasses.replace(base, start=g, slope=1.5, probe_band=1e-9))
    if abs(math.log(r)) > 1e-9:
        assert far.slope is None and far.found and len(far.trials) > 1


def test_a_rotated_input_is_measured_in_whole_passes() -> None:
    """Windows that are the whole input rotated measure it a whole number of times (>= 2)."""
    from dualpool.planner._replicate import whole_passes

    assert whole_passes(40_000, 30_731) == 61_462  # ShareGPT: 1.3 passes -> 2
    assert whole_passes(40_000, 19_366) == 38_732  # Azure conv: 2.07 -> 2
    assert whole_passes(40_000, 7_000) == 42_000  # 5.7 -> 6
    assert whole_passes(40_001, 20_000, up=True) == 60_000
    for n in (1_500, 19_366, 30_731, 49_999):
        wp = window_plan(
            n, 1000.0, seed=0, warmup_s=3.0, measure_s=40.0, min_measured=2000, block=None
        )
        measured = wp.run_requests - 3_000
        assert wp.block == n and measured % n == 0 and measured >= 2 * n
    # Disjoint windows (an input larger than a whole-input window): one block, as before.
    wp = window_plan(
        600_000, 1000.0, seed=0, warmup_s=0.0, measure_s=40.0, min_measured=2000, block=None
    )
    assert wp.block == wp.run_requests == 40_000


def test_the_window_cap_follows_the_precision() -> None:
    from dualpool.planner import VerifySettings

    assert VerifySettings().window_cap == 40
    assert VerifySettings(precision=0.01).window_cap == 160
    assert VerifySettings(precision=0.04).window_cap == 10
    assert VerifySettings(precision=0.2).window_cap == 4  # never below min_windows
    assert VerifySettings(precision=0.01, max_windows=7).window_cap == 7


def test_the_verifier_reads_exact_p99s(small_mix: Mix, small_settings: PlanSettings) -> None:
    """Not the sketch's 2% buckets: the P99 of the measured requests themselves."""
    job = _job(small_mix, small_settings, 0, 8192)
    sim = simulate_whole_pool(
        job.model,
        job.gpu,
        job.design,
        2,
        job.requests(),
        warmup_s=2.0,
        ttft_slo=2.0,
        tpot_slo=0.08,
        keep_samples=True,
    )
    assert sim.ttft and sim.ttft_p99_s == pytest.approx(float(np.quantile(sim.ttft, 0.99)))
    assert sim.tpot_p99_s == pytest.approx(float(np.quantile(sim.tpot, 0.99)))
    assert sim.meets == (sim.ttft_p99_s <= 2.0 and sim.tpot_p99_s <= 0.08 and not sim.rejected)
