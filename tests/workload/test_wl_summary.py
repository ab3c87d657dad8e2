from __future__ import annotations

import json

import pytest

from dualpool.workload import UNKNOWN_TOKENS, Request, summary


def test_summary_by_hand() -> None:
    reqs = [
        Request(0.0, 1000, 100),  # 1100
        Request(1.0, 3000, 500, max_tokens=2000),  # 3500, declared 5000
        Request(2.0, 10_000, 1000),  # 11000
        Request(4.0, UNKNOWN_TOKENS, UNKNOWN_TOKENS),
    ]
    s = summary(reqs, budgets=(2048, 4096, 8192, 16384))
    assert s.count == 4 and s.unknown_tokens == 1
    assert s.rate == pytest.approx(3 / 4.0)
    assert s.alpha == pytest.approx({2048: 1 / 3, 4096: 2 / 3, 8192: 2 / 3, 16384: 1.0})
    assert s.alpha_declared == pytest.approx({2048: 1 / 3, 4096: 1 / 3, 8192: 2 / 3, 16384: 1.0})
    assert s.total is not None and s.prompt is not None
    assert s.total.percentiles[50.0] == 3500
    assert s.prompt.max == 10_000
    json.dumps(s.as_dict())


def test_summary_empty() -> None:
    s = summary([])
    assert s.count == 0 and s.rate == 0.0 and s.prompt is None
    assert all(v == 0.0 for v in s.alpha.values())
