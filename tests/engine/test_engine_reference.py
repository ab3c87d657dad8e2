"""The optimised scheduler (lazy decode group) against the pre-optimisation one.

`reference_engine.py` is the scheduler before the decode group, kept verbatim.
Random workloads (tiny KV caches with preemptions, chunked prefill on/off,
queues blocked by max_num_seqs) run through both; step by step every output
and every request field must be identical, times included (the group sums
integers exactly); with fast_forward, times agree to rounding.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_engine import Scheduler as RefScheduler

from dualpool.engine import EngineConfig, Scheduler, StepTimeModel, get_gpu, get_model
from dualpool.engine.request import Request

MAX_LEN = 96
BS = 4


@st.composite
def cases(draw: st.DrawFn) -> tuple[EngineConfig, int, list[tuple[float, int, int, int]], int]:
    chunked = draw(st.booleans())
    max_seqs = draw(st.integers(1, 10))
    lo = max(max_seqs, 1 if chunked else MAX_LEN)
    mnbt = draw(st.integers(lo, max(lo, 200)))
    config = EngineConfig(
        max_model_len=MAX_LEN,
        max_num_seqs=max_seqs,
        max_num_batched_tokens=mnbt,
        block_size=BS,
        enable_chunked_prefill=chunked,
    )
    blocks = draw(st.integers(MAX_LEN // BS, 4 * MAX_LEN // BS))
    arrivals = []
    t = 0.0
    for _ in range(draw(st.integers(1, 30))):
        t += draw(st.floats(0.0, 0.1))
        prompt = draw(st.integers(1, 80))
        max_tokens = draw(st.integers(1, 60))
        arrivals.append((t, prompt, max_tokens, draw(st.integers(1, max_tokens))))
    return config, blocks, arrivals, draw(st.integers(0, 2**31))


def build(config: EngineConfig, blocks: int) -> tuple[Scheduler, RefScheduler]:
    timing = StepTimeModel(get_model("llama-3.1-8b"), get_gpu("a100-80gb"), config)
    return Scheduler(config, blocks, timing), RefScheduler(config, blocks, timing)


def state(r: object) -> tuple[object, ...]:
    return tuple(
        getattr(r, f)
        for f in (
            "request_id",
            "status",
            "num_computed_tokens",
            "num_output_tokens",
            "num_blocks",
            "num_preemptions",
            "first_token_time",
            "finish_time",
        )
    )


def same_scheduler(a: Scheduler, b: RefScheduler) -> None:
    assert [state(r) for r in a.running] == [state(r) for r in b.running]
    assert [state(r) for r in a.waiting] == [state(r) for r in b.waiting]
    assert a.kv.num_free_blocks == b.kv.num_free_blocks
    for name in (
        "num_preemptions_total",
        "prompt_tokens_total",
        "generation_tokens_total",
        "num_finished_total",
        "num_aborted_total",
        "num_rejected_total",
    ):
        assert getattr(a, name) == getattr(b, name), name


def ids(rs: list[Request]) -> list[str]:
    return [r.request_id for r in rs]


@settings(max_examples=300, deadline=None)
@given(cases())
def test_step_by_step_identical_with_aborts(
    case: tuple[EngineConfig, int, list[tuple[float, int, int, int]], int],
) -> None:
    """schedule/update (the emulator's API), with aborts in between: identical."""
    config, blocks, arrivals, seed = case
    rng = random.Random(seed)
    new, ref = build(config, blocks)
    now = 0.0
    i = 0
    reqs: list[tuple[Request, object]] = []
    for _ in range(5000):
        while i < len(arrivals) and arrivals[i][0] <= now:
            t, p, m, o = arrivals[i]
            reqs.append((new.add_request(str(i), p, m, t, o), ref.add_request(str(i), p, m, t, o)))
            i += 1
        if not new.has_unfinished_requests:
            assert not ref.has_unfinished_requests
            if i == len(arrivals):
                break
            now = arrivals[i][0]
            continue
        if rng.random() < 0.05 and reqs:
            rid = rng.choice(reqs)[0].request_id
            assert (new.abort_request(rid, now) is None) == (ref.abort_request(rid, now) is None)
        oa, ob = new.schedule(), ref.schedule()
        assert ids(oa.scheduled) == ids(ob.scheduled)
        assert oa.num_scheduled_tokens == ob.num_scheduled_tokens
        assert (oa.preempted_ids, oa.admitted_ids) == (ob.preempted_ids, ob.admitted_ids)
        for f in (
            "total_num_scheduled_tokens",
            "num_scheduled_seqs",
            "num_prefill_tokens",
            "num_decode_tokens",
            "kv_read_tokens",
            "attention_pairs",
        ):
            assert getattr(oa, f) == getattr(ob, f), f
        if rng.random() < 0.05 and oa.scheduled:
            rid = rng.choice(oa.scheduled).request_id  # between schedule and update
            assert new.abort_request(rid, now) is not None
            assert ref.abort_request(rid, now) is not None
        same_scheduler(new, ref)
        dt = new.step_time(oa)
        assert dt == ref.step_time(ob)
        now += dt
        ra, rb = new.update_from_output(oa, now), ref.update_from_output(ob, now)
        assert ids(ra.finished) == ids(rb.finished)
        assert ids(ra.first_tokens) == ids(rb.first_tokens)
        assert ra.num_generated_tokens == rb.num_generated_tokens
        same_scheduler(new, ref)
        assert all(state(a) == state(b) for a, b in reqs)
    else:
        raise AssertionError("did not drain")
    assert all(state(a) == state(b) for a, b in reqs)


@settings(max_examples=300, deadline=None)
@given(cases())
def test_fast_forward_matches_reference_steps(
    case: tuple[EngineConfig, int, list[tuple[float, int, int, int]], int],
) -> None:
    """The simulator's driving (fast_forward with until_time, else step) vs the old steps."""
    config, blocks, arrivals, _ = case
    new, ref = build(config, blocks)
    new.list_decode_members = False  # as the simulator drives it

    def drive(s: Scheduler | RefScheduler, fast: bool) -> list[object]:
        out = []
        now = 0.0
        i = 0
        while i < len(arrivals) or s.has_unfinished_requests:
            while i < len(arrivals) and arrivals[i][0] <= now:
                t, p, m, o = arrivals[i]
                out.append(s.add_request(str(i), p, m, t, o))
                i += 1
            if not s.has_unfinished_requests:
                if i == len(arrivals):
                    break
                now = arrivals[i][0]
                continue
            if fast:
                nxt = arrivals[i][0] if i < len(arrivals) else None
                k, end = s.peek_fast_forward(now, until_time=nxt)
                ff = s.fast_forward(now, until_time=nxt)
                assert ff.steps == k
                if k:
                    assert ff.now == end
                    now = ff.now
                    continue
            _, res = s.step(now)
            now = res.now
        return out

    got = drive(new, True)
    want = drive(ref, False)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        sa, sb = state(a), state(b)
        assert sa[:6] == sb[:6]
        for ta, tb in zip(sa[6:], sb[6:], strict=True):
            assert (ta is None) == (tb is None)
            if ta is not None:
                assert ta == pytest.approx(tb, rel=1e-9, abs=1e-12)
    same_scheduler_counts = (
        "num_preemptions_total",
        "prompt_tokens_total",
        "generation_tokens_total",
        "num_finished_total",
    )
    for name in same_scheduler_counts:
        assert getattr(new, name) == getattr(ref, name)
    assert new.kv.num_free_blocks == ref.kv.num_free_blocks == blocks
