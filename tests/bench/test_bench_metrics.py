"""The summary's definitions, checked by hand on small cases (vLLM's calculate_metrics)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpool.bench import RequestResult, parse_goodput, summarize
from dualpool.errors import ConfigError


def _ok(i: int, start: float, ttft: float, itl: list[float], usage_out: int) -> RequestResult:
    r = RequestResult(i, start_s=start, status=200, success=True, ttft_s=ttft)
    r.itl_s = itl
    r.e2e_s = ttft + sum(itl)
    r.chunks = len(itl) + 1
    r.completion_tokens = usage_out
    r.prompt_tokens = 100
    return r


def test_tpot_excludes_the_first_token_and_one_token_counts_zero() -> None:
    a = _ok(0, 0.0, 0.5, [0.1, 0.1, 0.1], 4)  # TPOT = (0.8 - 0.5) / 3 = 0.1
    b = _ok(1, 0.0, 0.2, [], 1)  # one output token: no TPOT, 0 for goodput
    assert a.tpot_s == pytest.approx(0.1)
    assert b.tpot_s == 0.0
    s = summarize([a, b], 2.0, percentiles=(50.0,))
    assert s.stats["tpot"]["mean"] == pytest.approx(100.0)  # only a
    assert s.stats["itl"]["mean"] == pytest.approx(100.0)  # all gaps of all requests
    assert s.stats["ttft"]["median"] == pytest.approx(350.0)
    assert s.completed == 2 and s.total_output_tokens == 5 and s.total_input_tokens == 200
    assert s.request_throughput == pytest.approx(1.0)
    assert s.output_throughput == pytest.approx(2.5)


def test_goodput_counts_requests_meeting_every_slo() -> None:
    fast = _ok(0, 0.0, 0.1, [0.01] * 9, 10)
    slow_first = _ok(1, 0.0, 0.9, [0.01] * 9, 10)
    slow_tokens = _ok(2, 0.0, 0.1, [0.2] * 9, 10)
    failed = RequestResult(3, status=500, error_kind="http_5xx")
    s = summarize([fast, slow_first, slow_tokens, failed], 4.0, goodput={"ttft": 500, "tpot": 50})
    assert s.request_goodput == pytest.approx(1 / 4.0)
    assert s.failed == 1 and s.errors_by_kind == {"http_5xx": 1}
    assert summarize([fast], 1.0).request_goodput is None


def test_vllm_field_names() -> None:
    s = summarize([_ok(0, 0.0, 0.1, [0.02], 2)], 1.0, percentiles=(99.0, 99.9))
    doc = s.as_vllm()
    for name in ("ttft", "tpot", "itl", "e2el"):
        for k in (f"mean_{name}_ms", f"median_{name}_ms", f"std_{name}_ms", f"p99_{name}_ms"):
            assert k in doc
        assert f"p99.9_{name}_ms" in doc
    for k in ("duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
              "request_throughput", "request_goodput", "output_throughput",
              "total_token_throughput", "max_output_tokens_per_s", "max_concurrent_requests"):  # fmt: skip
        assert k in doc


def test_peak_concurrency_and_tokens_per_second() -> None:
    rs = [
        _ok(i, 0.1 * i, 0.05, [0.01] * 3, 4) for i in range(5)
    ]  # overlapping: 0.1 apart, 0.08 long
    s = summarize(rs, 1.0)
    assert s.max_concurrent_requests == 1
    assert s.max_output_tokens_per_s == 20  # all 20 tokens in the first second


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.001, 10.0), min_size=1, max_size=40))
def test_percentiles_are_numpys(ttfts: list[float]) -> None:
    rs = [_ok(i, 0.0, t, [], 1) for i, t in enumerate(ttfts)]
    s = summarize(rs, 1.0, percentiles=(50.0, 90.0))
    assert s.metric("ttft", "p90") == pytest.approx(float(np.percentile(ttfts, 90)) * 1000)
    assert s.metric("ttft", "mean") == pytest.approx(float(np.mean(ttfts)) * 1000)


@pytest.mark.parametrize("bad", [["ttft"], ["ttft:x"], ["foo:3"], ["tpot:-1"]])
def test_bad_goodput_names_the_flag(bad: list[str]) -> None:
    with pytest.raises(ConfigError, match="--goodput"):
        parse_goodput(bad)
