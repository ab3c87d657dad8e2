from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from wl_helpers import need

from dualpool.errors import WorkloadError
from dualpool.workload import CdfWorkload, LengthTrace, SplitTotal, TokenCdf, summary


def gaps_cv(arrivals: list[float]) -> float:
    g = np.diff(np.asarray(arrivals))
    return float(g.std() / g.mean())


def test_length_trace_file_order_and_count(traces: Path) -> None:
    path = need(traces / "sharegpt_8k_lengths_llama2.csv")
    reqs = list(LengthTrace(path, rate=100.0))
    with path.open() as f:
        n_rows = sum(1 for line in f if line.strip()) - 1
    assert len(reqs) == n_rows
    assert (reqs[0].prompt_tokens, reqs[0].output_tokens) == (74, 918)
    assert all(a.arrival_s <= b.arrival_s for a, b in itertools.pairwise(reqs))
    rate = (len(reqs) - 1) / (reqs[-1].arrival_s - reqs[0].arrival_s)
    assert rate == pytest.approx(100.0, rel=0.03)


def test_length_trace_loop_and_limits(traces: Path) -> None:
    path = need(traces / "arxiv_summarization_lengths_llama2.csv")
    w = LengthTrace(path, rate=1000.0, loop=True, num_requests=60_000)
    reqs = list(w)
    assert len(reqs) == 60_000
    n_rows = len(w.rows()[0])
    assert reqs[n_rows].prompt_tokens == reqs[0].prompt_tokens
    short = list(LengthTrace(path, rate=10.0, duration_s=30.0))
    assert short and short[-1].arrival_s < 30.0


def test_length_trace_determinism_and_burstiness(traces: Path) -> None:
    path = need(traces / "bwb_lengths_llama2.csv")
    a = list(itertools.islice(LengthTrace(path, rate=5.0, cv=3.0, seed=7), 20_000))
    b = list(itertools.islice(LengthTrace(path, rate=5.0, cv=3.0, seed=7), 20_000))
    c = list(itertools.islice(LengthTrace(path, rate=5.0, cv=3.0, seed=8), 20_000))
    assert a == b
    assert a != c
    assert gaps_cv([r.arrival_s for r in a]) == pytest.approx(3.0, rel=0.2)
    poisson = list(itertools.islice(LengthTrace(path, rate=5.0, seed=7), 20_000))
    assert gaps_cv([r.arrival_s for r in poisson]) == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a,b\n1,2\n", r"l\.csv:1: bad header"),
        ("num_prefill_tokens,num_decode_tokens\n", r"no data rows"),
        ("num_prefill_tokens,num_decode_tokens\n1,2\nx,2\n", r"l\.csv:3: num_prefill_tokens"),
        ("num_prefill_tokens,num_decode_tokens\n1,-2\n", r"l\.csv:2: num_decode_tokens"),
    ],
)
def test_length_trace_bad_files(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "l.csv"
    p.write_text(text)
    with pytest.raises(WorkloadError, match=match):
        list(LengthTrace(p, rate=1.0))


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_rate(tmp_path: Path, rate: float) -> None:
    with pytest.raises(WorkloadError, match="rate"):
        LengthTrace(tmp_path / "x.csv", rate=rate)


def test_cdf_sampling_matches_points(cdfs: Path) -> None:
    cdf = TokenCdf.from_file(need(cdfs / "lmsys_cdf.json"))
    x = cdf.sample(np.random.default_rng(1), 200_000)
    for tokens, frac in cdf.points:
        assert float(np.mean(x <= tokens)) == pytest.approx(frac, abs=0.006)


def test_cdf_dict_format_and_leading_zeros(cdfs: Path) -> None:
    cdf = TokenCdf.from_file(need(cdfs / "agent_heavy_cdf.json"))
    x = cdf.sample(np.random.default_rng(2), 50_000)
    assert x.min() >= 128  # F(128) = 0: no mass below
    assert float(np.mean(x <= 4096)) == pytest.approx(0.538, abs=0.01)


def test_cdf_log_linear_interpolation() -> None:
    cdf = TokenCdf([[100, 0.5], [400, 1.0]], min_tokens=25)
    assert cdf.quantile(0.25) == pytest.approx(50.0)
    assert cdf.quantile(0.75) == pytest.approx(200.0)
    assert cdf.quantile(1.0) == pytest.approx(400.0)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([], "empty CDF"),
        ([[10, 0.5], [5, 1.0]], "breaks the order"),
        ([[10, 0.5], [20, 0.4], [30, 1.0]], "breaks the order"),
        ([[10, 0.5], [20, 0.9]], "must end at 1.0"),
        ([[10, 1.5]], "0 <= fraction <= 1"),
        ([["a", 1.0]], "expected \\[tokens, cumulative_fraction\\]"),
        ({"points": []}, "expected a list"),
    ],
)
def test_bad_cdf(tmp_path: Path, data: object, match: str) -> None:
    p = tmp_path / "c.json"
    p.write_text(json.dumps(data))
    with pytest.raises(WorkloadError, match=match):
        TokenCdf.from_file(p)


def test_cdf_not_json(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    p.write_text("[[1, 0.5],\n oops]")
    with pytest.raises(WorkloadError, match=r"c\.json:2: not JSON"):
        CdfWorkload(p, rate=1.0)
    with pytest.raises(WorkloadError, match="no such file"):
        CdfWorkload(tmp_path / "none.json", rate=1.0)


def test_split_total() -> None:
    cdf = TokenCdf([[1000, 1.0]], min_tokens=100)
    p, o = SplitTotal(cdf, 0.25).sample(np.random.default_rng(0), 10_000)
    assert (p >= 1).all() and (o >= 1).all()
    assert float((o / (p + o)).mean()) == pytest.approx(0.25, abs=0.01)
    p, o = SplitTotal(cdf, 0.3, 0.1).sample(np.random.default_rng(0), 50_000)
    share = o / (p + o)
    assert float(share.mean()) == pytest.approx(0.3, abs=0.01)
    assert float(share.std()) == pytest.approx(0.1, abs=0.015)
    with pytest.raises(WorkloadError, match="too large"):
        SplitTotal(cdf, 0.5, 0.6)
    with pytest.raises(WorkloadError, match="output_fraction"):
        SplitTotal(cdf, 1.0)


def test_cdf_workload(cdfs: Path) -> None:
    w = CdfWorkload(need(cdfs / "azure_cdf.json"), rate=20.0, duration_s=500.0, seed=3)
    s = summary(w)
    assert s.rate == pytest.approx(20.0, rel=0.1)
    assert s.alpha[2048] == pytest.approx(0.78, abs=0.03)
    assert list(w) == list(
        CdfWorkload(cdfs / "azure_cdf.json", rate=20.0, duration_s=500.0, seed=3)
    )
