from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wl_helpers import need

from dualpool.errors import WorkloadError
from dualpool.workload import (
    AzureTrace,
    Request,
    WithPromptBytes,
    declare_max_tokens,
    limit,
    measure_rate,
    open_workload,
    preset,
    retime,
    scale_rate,
    shard,
    shard_bounds,
    window,
    with_prompt_bytes,
)


def test_scale_rate() -> None:
    w = preset("lognormal", rate=5.0, duration_s=100.0)
    fast = scale_rate(w, 4.0)
    base = list(w)
    got = list(fast)
    assert len(got) == len(base)
    assert [r.arrival_s for r in got] == pytest.approx([r.arrival_s / 4.0 for r in base])
    assert [r.prompt_tokens for r in got] == [r.prompt_tokens for r in base]
    assert fast.rate_hint() == 20.0 and fast.duration_hint() == 25.0
    assert base[0].arrival_s == next(iter(w)).arrival_s  # the source is untouched
    with pytest.raises(WorkloadError, match="rate scale factor"):
        scale_rate(w, 0.0)


def test_retime_trace_to_target_rate(traces: Path) -> None:
    w = AzureTrace(need(traces / "azure_2023_code.csv"))
    assert measure_rate(retime(w, 50.0)) == pytest.approx(50.0, rel=1e-9)
    s = retime(preset("lognormal", rate=2.0, duration_s=50.0), 8.0)
    assert s.factor == 4.0


def test_window_and_rebase() -> None:
    w = preset("lognormal", rate=5.0, duration_s=100.0)
    win = list(window(w, 20.0, 30.0))
    assert win and all(20.0 <= r.arrival_s < 30.0 for r in win)
    assert win == [r for r in w if 20.0 <= r.arrival_s < 30.0]
    reb = list(window(w, 20.0, 30.0, rebase=True))
    assert [r.arrival_s for r in reb] == pytest.approx([r.arrival_s - 20.0 for r in win])
    assert list(window(iter(list(w)), 20.0, 30.0)) == win  # plain iterators too
    with pytest.raises(WorkloadError, match="bad time window"):
        window(w, 5.0, 1.0)


def test_limit() -> None:
    w = preset("lognormal", rate=5.0)  # endless
    assert len(list(limit(w, 77))) == 77
    assert list(limit(w, 0)) == []
    with pytest.raises(WorkloadError, match="limit"):
        limit(w, -1)


def test_shard_bounds() -> None:
    assert shard_bounds(0, 3, 30.0) == (-math.inf, 10.0)
    assert shard_bounds(1, 3, 30.0) == (10.0, 20.0)
    assert shard_bounds(2, 3, 30.0) == (20.0, math.inf)
    assert shard_bounds(0, 1, 30.0) == (-math.inf, math.inf)
    with pytest.raises(WorkloadError, match="shard index"):
        shard_bounds(3, 3, 30.0)
    with pytest.raises(WorkloadError, match="shard count"):
        shard_bounds(0, 0, 30.0)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    count=st.integers(1, 9),
    rate=st.floats(0.05, 20.0),
    cv=st.sampled_from([1.0, 0.5, 3.0]),
    scale=st.sampled_from([1.0, 0.3, 7.0]),
    duration=st.floats(1.0, 500.0),
)
def test_shards_partition_synthetic(
    seed: int, count: int, rate: float, cv: float, scale: float, duration: float
) -> None:
    w = scale_rate(preset("lognormal", rate=rate, cv=cv, duration_s=300.0, seed=seed), scale)
    whole = list(w)
    parts = [list(shard(w, i, count, duration_s=duration)) for i in range(count)]
    assert list(itertools.chain.from_iterable(parts)) == whole


@settings(max_examples=40, deadline=None)
@given(
    times=st.lists(st.floats(0.0, 100.0), max_size=60).map(sorted),
    count=st.integers(1, 7),
)
def test_shards_partition_any_stream(times: list[float], count: int) -> None:
    reqs = [Request(t, i + 1, 1) for i, t in enumerate(times)]
    parts = [list(shard(reqs, i, count, duration_s=50.0)) for i in range(count)]
    assert list(itertools.chain.from_iterable(parts)) == reqs


def test_shard_duration_from_hint_or_pass(traces: Path) -> None:
    w = preset("lognormal", rate=5.0, duration_s=100.0)
    assert shard(w, 1, 4).start_s == 25.0
    tr = AzureTrace(need(traces / "azure_2023_code.csv"))
    parts = [list(shard(tr, i, 3)) for i in range(3)]
    assert sum(len(p) for p in parts) == sum(1 for _ in tr)
    with pytest.raises(WorkloadError, match="duration_s"):
        shard(iter([Request(0.0, 1, 1)]), 0, 2)


def test_shards_of_week_are_cheap() -> None:
    w = preset("azure-2024-week", seed=4)
    last = shard(window(w, 0.0, 7 * 86400.0), 6, 7)
    first_reqs = list(itertools.islice(last, 10))
    assert first_reqs[0].arrival_s >= 6 * 86400.0


def test_declare_max_tokens() -> None:
    base = list(preset("lognormal", rate=5.0, num_requests=500))
    capped = list(declare_max_tokens(base, 100))
    assert all(r.max_tokens == 100 for r in capped)
    assert [r.output_tokens for r in capped] == [min(r.output_tokens, 100) for r in base]
    exact = list(declare_max_tokens(base, "output"))
    assert all(r.max_tokens == r.output_tokens for r in exact)
    assert all(r.max_tokens is None for r in declare_max_tokens(exact, None))
    assert all(r.max_tokens is None for r in base)  # inputs untouched
    with pytest.raises(WorkloadError, match="max_tokens"):
        declare_max_tokens(base, 0)


def test_with_prompt_bytes_is_per_request_pure() -> None:
    w = preset("azure-2024-week", duration_s=600.0, seed=9)
    tagged = with_prompt_bytes(w, seed=1)
    whole = list(tagged)
    assert all(r.prompt_bytes is not None for r in whole)
    parts = [list(shard(tagged, i, 3)) for i in range(3)]
    assert list(itertools.chain.from_iterable(parts)) == whole
    code = [(r.prompt_bytes or 0) / r.prompt_tokens for r in whole if r.category == "code"]
    assert sum(code) / len(code) == pytest.approx(3.52, rel=0.02)
    no_jitter = list(with_prompt_bytes([Request(0.0, 100, 1, category="cjk")], jitter=0.0))
    assert no_jitter[0].prompt_bytes == 201


def test_with_prompt_bytes_blocks_match_the_scalar_definition() -> None:
    # The numpy block path against the per-request Python definition, with
    # requests that already carry bytes or lack token counts mixed in.
    w = list(preset("azure-conv-like", rate=50.0, duration_s=600.0, seed=4))
    w[3] = Request(w[3].arrival_s, w[3].prompt_tokens, 5, prompt_bytes=77)
    w[10] = Request(w[10].arrival_s, -1, -1)
    w.append(Request(w[-1].arrival_s + 1.0, 0, 1, category="unknown-class"))
    tagged = with_prompt_bytes(w, {"prose": 4.3, "default": 3.9}, jitter=0.3, seed=2**63 + 5)
    got = list(tagged)
    want = [tagged._one(r) for r in w]
    assert len(got) == len(w) > 1000
    assert [r.prompt_bytes for r in got] == [r.prompt_bytes for r in want]
    assert got[3] is w[3] and got[10].prompt_bytes is None
    assert all(a.arrival_s == b.arrival_s for a, b in zip(got, w, strict=True))


def _flat(blocks: Iterable[list[Request]]) -> list[Request]:
    out: list[Request] = []
    for b in blocks:
        assert b, "iter_blocks yields no empty block"
        out.extend(b)
    return out


@pytest.mark.parametrize(
    "spec",
    [
        "azure-conv-like?rate=200&duration_s=30",
        "azure-2024-week?rate_scale=0.01&end_s=7200",
        "lmsys-like?rate=50&num_requests=700",
    ],
)
def test_iter_blocks_is_the_stream_in_blocks(spec: str) -> None:
    # The simulator reads workloads block by block: same requests, same order,
    # whole and through the windows and shards it runs.
    w = open_workload(spec, seed=4)
    assert _flat(w.iter_blocks()) == list(w)
    for lo, hi in [(0.0, 5.0), (3.3, 17.9), (12.0, math.inf), (-math.inf, 0.4)]:
        assert _flat(w.iter_blocks(lo, hi)) == list(w.iter_window(lo, hi))
    for i in range(3):
        part = shard(w, i, 3)
        assert _flat(part.iter_blocks()) == list(part)
    assert _flat(window(w, 2.0, 9.0, rebase=True).iter_blocks()) == list(
        window(w, 2.0, 9.0, rebase=True)
    )


def test_blocks_with_bytes_match_the_per_request_path() -> None:
    w = open_workload("azure-code-like?rate=100&duration_s=20", seed=2)
    for jitter in (0.0, 0.1):
        wb = WithPromptBytes(w, jitter=jitter, seed=9)
        pairs = [
            (r, b)
            for block, nb in wb.iter_blocks_with_bytes()
            for r, b in zip(block, nb, strict=True)
        ]
        # the requests as they are, and the bytes that iterating stamps on copies
        stamped = list(wb)
        assert [r for r, _ in pairs] == list(w)
        assert [b for _, b in pairs] == [r.prompt_bytes for r in stamped]
        assert [b for _, b in pairs][:5] == [wb._one(r).prompt_bytes for r in list(w)[:5]]
        assert list(wb.iter_with_bytes()) == pairs
    # a plain list (not a Workload) goes through the default batching
    reqs = list(limit(w, 100))
    wl = WithPromptBytes(reqs, seed=9)
    blocks = list(wl.iter_blocks_with_bytes())
    assert all(b for b, _ in blocks)
    assert [r for b, _ in blocks for r in b] == reqs
    assert [n for _, nb in blocks for n in nb] == [r.prompt_bytes for r in wl]
