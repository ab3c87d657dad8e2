"""Hypothesis invariants of the scheduler, and fast_forward == step-by-step."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpool.engine import (
    EngineConfig,
    RequestStatus,
    Scheduler,
    StepTimeModel,
    StepTimeParams,
    get_gpu,
    get_model,
)
from dualpool.engine.request import Request

MAX_LEN = 96
BS = 4
# Odd constants so step boundaries do not coincide with arrival times.
PARAMS = StepTimeParams(step_overhead_s=0.0021371, per_seq_overhead_s=1.37e-5)


@dataclass(frozen=True)
class Arrival:
    time: float
    prompt: int
    max_tokens: int
    output: int


@st.composite
def workloads(draw: st.DrawFn) -> tuple[EngineConfig, int, list[Arrival]]:
    chunked = draw(st.booleans())
    max_seqs = draw(st.integers(1, 6))
    lo = max(max_seqs, 1 if chunked else MAX_LEN)
    mnbt = draw(st.integers(lo, max(lo, 160)))
    config = EngineConfig(
        max_model_len=MAX_LEN,
        max_num_seqs=max_seqs,
        max_num_batched_tokens=mnbt,
        block_size=BS,
        enable_chunked_prefill=chunked,
    )
    # At least one max_model_len sequence fits, as plan_memory guarantees.
    blocks = draw(st.integers(MAX_LEN // BS, 3 * MAX_LEN // BS))
    arrivals = []
    t = 0.0
    for _ in range(draw(st.integers(1, 12))):
        t += draw(st.floats(0.0, 0.2))
        prompt = draw(st.integers(1, 80))
        max_tokens = draw(st.integers(1, 50))
        output = draw(st.integers(1, max_tokens))
        arrivals.append(Arrival(t, prompt, max_tokens, output))
    return config, blocks, arrivals


def make(config: EngineConfig, blocks: int) -> Scheduler:
    timing = StepTimeModel(get_model("llama-3.1-8b"), get_gpu("a100-80gb"), config, PARAMS)
    return Scheduler(config, blocks, timing)


def check_invariants(s: Scheduler) -> None:
    kv = s.kv
    assert 0 <= kv.num_free_blocks <= kv.num_gpu_blocks
    assert kv.num_used_blocks == sum(r.num_blocks for r in s.running)
    assert all(r.num_blocks == 0 for r in s.waiting)
    assert len(s.running) <= s.config.max_num_seqs
    assert all(r.status == RequestStatus.RUNNING for r in s.running)
    for r in s.running:
        assert r.num_blocks * s.config.block_size >= r.num_computed_tokens


def run(
    config: EngineConfig, blocks: int, arrivals: list[Arrival], fast: bool
) -> tuple[Scheduler, list[Request], int]:
    s = make(config, blocks)
    reqs: list[Request] = []
    now = 0.0
    i = 0
    ff_steps = 0
    guard = 0
    while i < len(arrivals) or s.has_unfinished_requests:
        guard += 1
        assert guard < 100_000
        while i < len(arrivals) and arrivals[i].time <= now:
            a = arrivals[i]
            reqs.append(s.add_request(str(i), a.prompt, a.max_tokens, a.time, a.output))
            i += 1
        if not s.has_unfinished_requests:
            if i == len(arrivals):
                break  # the last arrivals were rejected
            now = arrivals[i].time
            continue
        if fast:
            nxt = arrivals[i].time if i < len(arrivals) else None
            ff = s.fast_forward(now, until_time=nxt)
            check_invariants(s)
            if ff.steps:
                ff_steps += ff.steps
                now = ff.now
                continue
        out, res = s.step(now)
        assert not out.is_empty, "an empty step with unfinished requests would spin"
        check_invariants(s)
        now = res.now
    return s, reqs, ff_steps


@settings(max_examples=120, deadline=None)
@given(workloads())
def test_invariants_and_conservation(w: tuple[EngineConfig, int, list[Arrival]]) -> None:
    config, blocks, arrivals = w
    s, reqs, _ = run(config, blocks, arrivals, fast=False)
    done = [r for r in reqs if r.status != RequestStatus.FINISHED_REJECTED]
    # Every request ends exactly once: finished or rejected, never both, none pending.
    assert all(r.is_finished for r in reqs)
    assert s.num_finished_total + s.num_rejected_total == len(reqs)
    assert all(r.finish_time is not None for r in reqs)
    for r in reqs:
        if r.status == RequestStatus.FINISHED_REJECTED:
            assert r.prompt_tokens + r.max_tokens > MAX_LEN and r.error
        else:
            assert r.num_output_tokens == r.output_tokens
            assert r.first_token_time is not None and r.finish_time is not None
            assert r.arrival_time <= r.first_token_time <= r.finish_time
    # Conservation of tokens.
    assert s.generation_tokens_total == sum(r.output_tokens for r in done)
    assert s.prompt_tokens_total == sum(r.prompt_tokens for r in done)
    assert s.num_preemptions_total == sum(r.num_preemptions for r in reqs)
    assert s.kv.num_free_blocks == blocks


@settings(max_examples=150, deadline=None)
@given(workloads())
def test_fast_forward_matches_step_by_step(w: tuple[EngineConfig, int, list[Arrival]]) -> None:
    config, blocks, arrivals = w
    slow, slow_reqs, _ = run(config, blocks, arrivals, fast=False)
    fast, fast_reqs, _ = run(config, blocks, arrivals, fast=True)
    assert len(slow_reqs) == len(fast_reqs)
    for a, b in zip(slow_reqs, fast_reqs, strict=True):
        assert (a.status, a.num_output_tokens, a.num_preemptions) == (
            b.status,
            b.num_output_tokens,
            b.num_preemptions,
        )
        for ta, tb in ((a.first_token_time, b.first_token_time), (a.finish_time, b.finish_time)):
            assert (ta is None) == (tb is None)
            if ta is not None:
                assert ta == pytest.approx(tb, rel=1e-9, abs=1e-12)
    for counter in (
        "num_preemptions_total",
        "prompt_tokens_total",
        "generation_tokens_total",
        "num_finished_total",
        "num_rejected_total",
    ):
        assert getattr(slow, counter) == getattr(fast, counter)


def test_fast_forward_is_used_on_long_decodes() -> None:
    config = EngineConfig(max_model_len=4096, max_num_seqs=8, block_size=16)
    arrivals = [Arrival(0.001 * i, 100 + i, 1000, 900 + 10 * i) for i in range(8)]
    _slow, slow_reqs, _ = run(config, 4096, arrivals, fast=False)
    _fast, fast_reqs, ff_steps = run(config, 4096, arrivals, fast=True)
    assert ff_steps > 800
    for a, b in zip(slow_reqs, fast_reqs, strict=True):
        assert a.finish_time == pytest.approx(b.finish_time, rel=1e-9)


def test_fast_forward_stops_before_a_preemption() -> None:
    # 3 requests that together outgrow 40 blocks of 4 tokens: preemptions happen
    # inside what would otherwise be one decode run.
    config = EngineConfig(
        max_model_len=96, max_num_seqs=4, max_num_batched_tokens=256, block_size=4
    )
    arrivals = [Arrival(0.0, 20, 60, 60) for _ in range(3)]
    slow, slow_reqs, _ = run(config, 40, arrivals, fast=False)
    fast, fast_reqs, ff_steps = run(config, 40, arrivals, fast=True)
    assert slow.num_preemptions_total > 0 and ff_steps > 0
    assert slow.num_preemptions_total == fast.num_preemptions_total
    for a, b in zip(slow_reqs, fast_reqs, strict=True):
        assert a.finish_time == pytest.approx(b.finish_time, rel=1e-9)
