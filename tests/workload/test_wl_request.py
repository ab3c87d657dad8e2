from __future__ import annotations

from dualpool.workload import UNKNOWN_TOKENS, Request, RequestColumns


def test_defaults_and_copy() -> None:
    r = Request(1.5, 100, 20)
    assert (r.max_tokens, r.prompt_bytes, r.category, r.num_messages, r.body) == (
        None,
        None,
        None,
        1,
        None,
    )
    assert r.total_tokens == 120
    assert r.tokens_known
    c = r.at(3.0)
    assert c.arrival_s == 3.0 and r.arrival_s == 1.5
    assert c.prompt_tokens == 100 and c is not r
    assert not Request(0.0, UNKNOWN_TOKENS, 5).tokens_known


def test_slots_keep_it_small() -> None:
    r = Request(0.0, 1, 1)
    assert not hasattr(r, "__dict__")


def test_columns_roundtrip() -> None:
    reqs = [
        Request(0.0, 10, 2),
        Request(0.5, 20, 3, 64, 80, "code", 3),
        Request(1.0, 30, 4, None, None, "prose"),
    ]
    cols = RequestColumns.from_requests(reqs)
    assert len(cols) == 3
    assert cols.prompt_tokens.tolist() == [10, 20, 30]
    assert list(cols) == reqs
    assert list(RequestColumns.from_requests([])) == []
