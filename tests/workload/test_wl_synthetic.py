from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest

from dualpool.errors import WorkloadError
from dualpool.workload import (
    PRESETS,
    ArrivalProcess,
    Independent,
    LogNormalMixture,
    SyntheticWorkload,
    TrafficClass,
    preset,
    summary,
)
from dualpool.workload._arrivals import block_rng
from dualpool.workload._synthetic import AZURE_2024_WEEK_CODE_ROWS, AZURE_2024_WEEK_CONV_ROWS


@pytest.mark.parametrize("name", PRESETS)
def test_presets_deterministic(name: str) -> None:
    a = list(itertools.islice(preset(name, seed=5), 3000))
    b = list(itertools.islice(preset(name, seed=5), 3000))
    c = list(itertools.islice(preset(name, seed=6), 3000))
    assert a == b
    assert a != c
    assert all(r.prompt_tokens >= 1 and r.output_tokens >= 1 for r in a)
    assert all(x.arrival_s <= y.arrival_s for x, y in itertools.pairwise(a))


def test_azure_like_presets_match_the_fits() -> None:
    conv = summary(preset("azure-conv-like", num_requests=40_000, rate=1000.0))
    assert conv.prompt is not None and conv.output is not None
    assert conv.prompt.percentiles[50.0] == pytest.approx(788, rel=0.1)
    assert conv.output.percentiles[50.0] == pytest.approx(148, rel=0.1)
    assert conv.alpha[2048] == pytest.approx(0.85, abs=0.04)  # Azure conv data: 0.853
    code = summary(preset("azure-code-like", num_requests=40_000, rate=1000.0))
    assert code.prompt is not None
    assert code.prompt.percentiles[50.0] == pytest.approx(1435, rel=0.1)
    assert code.prompt.max <= 7437


def test_poisson_rate_and_count() -> None:
    s = summary(preset("lognormal", rate=50.0, duration_s=400.0, seed=1))
    assert s.rate == pytest.approx(50.0, rel=0.05)
    assert s.last_s < 400.0
    w = preset("lognormal", rate=50.0, num_requests=1234)
    assert len(list(w)) == 1234
    assert list(preset("lognormal", num_requests=0)) == []


def test_gamma_cv() -> None:
    p = ArrivalProcess(rate=10.0, cv=2.5)
    arr = np.concatenate([p.block(block_rng(0, 0, k), k) for k in range(300)])
    gaps = np.diff(arr)
    assert float(gaps.mean()) == pytest.approx(0.1, rel=0.05)
    assert float(gaps.std() / gaps.mean()) == pytest.approx(2.5, rel=0.15)
    assert (arr[1:] >= arr[:-1]).all()


def test_block_arrivals_stay_in_their_block() -> None:
    for cv in (1.0, 0.5, 4.0):
        p = ArrivalProcess(rate=3.0, cv=cv, block_s=10.0)
        for k in range(50):
            a = p.block(block_rng(1, 0, k), k)
            assert ((a >= 10.0 * k) & (a < 10.0 * (k + 1))).all()


def test_diurnal_cycle() -> None:
    p = ArrivalProcess(rate=10.0, diurnal_amplitude=0.5, diurnal_peak_s=12 * 3600)
    assert p.rate_at(12 * 3600) == pytest.approx(15.0)
    assert p.rate_at(0.0) == pytest.approx(5.0)
    counts = [len(p.block(block_rng(0, 0, k), k)) for k in range(1440)]
    assert sum(counts) / 86400 == pytest.approx(10.0, rel=0.01)  # mean over a day kept
    peak = sum(counts[690:750]) / 3600
    trough = sum(counts[:30] + counts[-30:]) / 3600
    assert peak / trough == pytest.approx(3.0, rel=0.15)


def test_week_preset_rates_and_mix() -> None:
    w = preset("azure-2024-week")
    assert w.duration_hint() == 7 * 86400
    total = AZURE_2024_WEEK_CODE_ROWS + AZURE_2024_WEEK_CONV_ROWS
    assert w.arrivals.rate * 7 * 86400 == pytest.approx(total)
    # the mix: share of code requests in an afternoon window
    reqs = list(w.iter_window(3 * 86400 + 14 * 3600, 3 * 86400 + 14 * 3600 + 300))
    share = sum(r.category == "code" for r in reqs) / len(reqs)
    assert share == pytest.approx(AZURE_2024_WEEK_CODE_ROWS / total, abs=0.03)
    assert {r.category for r in reqs} == {"code", "prose"}


def test_week_preset_streams_with_bounded_memory() -> None:
    w = preset("azure-2024-week", seed=1)
    tracemalloc.start()
    n = 0
    for _ in itertools.islice(w, 100_000):
        n += 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == 100_000
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.1f} MiB"  # one block at a time


def test_seek_equals_filter() -> None:
    w = preset("azure-2024-week", seed=2, duration_s=3 * 3600)
    full = [r for r in w if 3000.0 <= r.arrival_s < 3700.0]
    assert full
    assert list(w.iter_window(3000.0, 3700.0)) == full


def test_late_window_seeks_to_its_requests() -> None:
    # A window late in the week is read without generating the days before it
    # (docs/simulator.md: synthetic sources seek); checked by its content, not by a clock.
    w = preset("azure-2024-week")
    reqs = list(w.iter_window(6.5 * 86400, 6.5 * 86400 + 60))
    assert 2000 < len(reqs) < 8000


def test_custom_mixture_and_validation() -> None:
    lm = Independent(LogNormalMixture.single(5.0, 0.5, hi=1000), LogNormalMixture.single(3.0, 0.3))
    w = SyntheticWorkload(
        ArrivalProcess(rate=100.0),
        [TrafficClass(lm, 3.0, "a"), TrafficClass(lm, 1.0, "b")],
        num_requests=20_000,
    )
    reqs = list(w)
    assert sum(r.category == "a" for r in reqs) / len(reqs) == pytest.approx(0.75, abs=0.02)
    assert max(r.prompt_tokens for r in reqs) <= 1000
    with pytest.raises(WorkloadError, match="unknown synthetic preset 'nope'"):
        preset("nope")
    with pytest.raises(WorkloadError, match="seed"):
        preset("lognormal", seed=-1)
    with pytest.raises(WorkloadError, match="cv"):
        preset("lognormal", cv=0.0)
    with pytest.raises(WorkloadError, match="diurnal_amplitude"):
        preset("lognormal", diurnal_amplitude=1.5)
    with pytest.raises(WorkloadError, match="num_requests"):
        SyntheticWorkload(ArrivalProcess(rate=1.0), lm, num_requests=-3)
    with pytest.raises(WorkloadError, match="bounds"):
        LogNormalMixture.single(1.0, 1.0, lo=10, hi=5)
