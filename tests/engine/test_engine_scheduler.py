"""vLLM v1 scheduling: hand-checked cases."""

from __future__ import annotations

import pytest

from dualpool.engine import (
    EngineConfig,
    RequestStatus,
    Scheduler,
    StepTimeModel,
    get_gpu,
    get_model,
    over_length_message,
)
from dualpool.errors import RequestError


def make(num_blocks: int = 1000, **cfg: object) -> Scheduler:
    config = EngineConfig(**cfg)  # type: ignore[arg-type]
    timing = StepTimeModel(get_model("llama-3.1-8b"), get_gpu("h100-80gb"), config)
    return Scheduler(config, num_blocks, timing)


def drain(s: Scheduler, now: float = 0.0) -> float:
    while s.has_unfinished_requests:
        out, res = s.step(now)
        assert not out.is_empty
        now = res.now
    return now


def test_one_request_alone() -> None:
    s = make()
    r = s.add_request("a", prompt_tokens=100, max_tokens=5, arrival_time=0.0)
    t = s.timing
    out, res = s.step(0.0)
    assert out.num_prefill_tokens == 100 and out.num_decode_tokens == 0
    assert res.first_tokens == [r]
    prefill = t.step_time_raw(100, 1, 0, 100 * 101 // 2)
    assert prefill == t.prefill_time(100)
    assert r.first_token_time == pytest.approx(prefill)
    drain(s, res.now)
    # E2E = prefill + four decode steps over contexts 100..103.
    assert r.finish_time == pytest.approx(prefill + t.decode_run_time(1, 100, 4))
    assert r.status == RequestStatus.FINISHED_LENGTH_CAPPED and r.finish_reason == "length"
    assert r.num_output_tokens == 5
    assert s.prompt_tokens_total == 100 and s.generation_tokens_total == 5
    assert s.kv.num_used_blocks == 0


def test_two_requests_share_a_batch() -> None:
    s = make()
    a = s.add_request("a", 100, max_tokens=10, arrival_time=0.0, output_tokens=3)
    b = s.add_request("b", 50, max_tokens=2, arrival_time=0.0)
    t = s.timing
    out, res = s.step(0.0)
    assert out.admitted_ids == ["a", "b"] and out.total_num_scheduled_tokens == 150
    t1 = t.step_time_raw(150, 2, 0, 5050 + 1275)
    assert a.first_token_time == b.first_token_time == pytest.approx(t1)
    out, res = s.step(res.now)
    assert out.is_decode_only and out.kv_read_tokens == 150
    t2 = t1 + t.decode_step_time(2, 150)
    assert b.finish_time == pytest.approx(t2) and b.finish_reason == "length"
    out, res = s.step(res.now)
    assert out.num_scheduled_seqs == 1 and out.kv_read_tokens == 101
    assert a.finish_time == pytest.approx(t2 + t.decode_step_time(1, 101))
    assert a.finish_reason == "stop"


def test_chunked_prefill_spreads_a_long_prompt() -> None:
    s = make(max_model_len=16384, max_num_batched_tokens=4096)
    r = s.add_request("a", 10_000, max_tokens=2, arrival_time=0.0)
    chunks = []
    now = 0.0
    while r.first_token_time is None:
        out, res = s.step(now)
        chunks.append(out.num_scheduled_tokens[0])
        now = res.now
    assert chunks == [4096, 4096, 1808]
    assert s.kv_usage > 0


def test_without_chunked_prefill_the_prompt_must_fit_whole() -> None:
    s = make(max_model_len=4096, max_num_batched_tokens=4096, enable_chunked_prefill=False)
    s.add_request("a", 3000, max_tokens=10, arrival_time=0.0)
    s.add_request("b", 2000, max_tokens=10, arrival_time=0.0)
    s.add_request("c", 10, max_tokens=10, arrival_time=0.0)
    out, _ = s.step(0.0)
    # b does not fit the 1096 tokens left, and c waits behind it (FCFS).
    assert out.admitted_ids == ["a"]
    out, _ = s.step(1.0)
    assert out.admitted_ids == ["b", "c"]


def test_preemption_forced_by_a_tiny_kv_cache() -> None:
    # 5 blocks of 4 tokens = 20 token slots; two requests of 8 + 8 tokens.
    s = make(num_blocks=5, block_size=4, max_model_len=16, max_num_batched_tokens=256)
    a = s.add_request("a", 8, max_tokens=8, arrival_time=0.0)
    b = s.add_request("b", 8, max_tokens=8, arrival_time=0.0)
    out, res = s.step(0.0)  # both prefilled: 2 + 2 blocks
    assert s.kv.num_free_blocks == 1
    out, res = s.step(res.now)  # a takes the last block; b cannot grow
    assert out.preempted_ids == ["b"]
    assert b.status == RequestStatus.PREEMPTED and b.num_computed_tokens == 0
    assert s.waiting[0] is b and b.num_blocks == 0
    assert out.admitted_ids == []  # no admission in a step that preempted
    assert s.num_preemptions_total == 1
    drain(s, res.now)
    assert a.num_preemptions == 0 and b.num_preemptions >= 1
    assert a.num_output_tokens == b.num_output_tokens == 8
    assert s.generation_tokens_total == 16  # recompute generates nothing twice
    assert s.kv.num_free_blocks == 5


def test_preempted_request_recomputes_prompt_and_output() -> None:
    s = make(
        num_blocks=5,
        block_size=4,
        max_model_len=16,
        max_num_batched_tokens=256,
        enable_prefix_caching=False,
    )
    s.add_request("a", 8, max_tokens=4, arrival_time=0.0)
    b = s.add_request("b", 8, max_tokens=8, arrival_time=0.0)
    _, res = s.step(0.0)
    out, res = s.step(res.now)
    assert out.preempted_ids == ["b"]
    now = res.now
    while "b" not in out.admitted_ids:
        out, res = s.step(now)
        now = res.now
    i = out.scheduled.index(b)
    assert out.num_scheduled_tokens[i] == 8 + 1  # prompt + the one generated token
    assert b.num_output_tokens == 2


def test_head_of_line_blocking_on_blocks() -> None:
    s = make(num_blocks=8, block_size=4, max_model_len=32, max_num_batched_tokens=256)
    s.add_request("big0", 20, max_tokens=4, arrival_time=0.0)  # 5 blocks
    _, res = s.step(0.0)
    s.add_request("big1", 16, max_tokens=4, arrival_time=0.0)  # needs 4 > 3 free
    s.add_request("small", 2, max_tokens=2, arrival_time=0.0)  # would fit in 1
    out, res = s.step(res.now)
    assert out.admitted_ids == []
    assert [r.request_id for r in s.waiting] == ["big1", "small"]


def test_max_num_seqs_limits_the_batch() -> None:
    s = make(max_num_seqs=2, max_num_batched_tokens=256)
    for i in range(3):
        s.add_request(str(i), 10, max_tokens=3, arrival_time=0.0)
    out, _ = s.step(0.0)
    assert out.admitted_ids == ["0", "1"] and s.num_waiting == 1


def test_over_length_rejection_has_vllms_message() -> None:
    s = make(max_model_len=8192)
    r = s.add_request("x", prompt_tokens=8000, max_tokens=500, arrival_time=1.5)
    assert r.status == RequestStatus.FINISHED_REJECTED and r.finish_time == 1.5
    assert r.error == (
        "This model's maximum context length is 8192 tokens. However, you requested 500 "
        "output tokens and your prompt contains at least 7693 input tokens, for a total of "
        "at least 8193 tokens. Please reduce the length of the input prompt or the number "
        "of requested output tokens. (parameter=input_tokens, value=7693)"
    )
    assert s.num_rejected_total == 1 and not s.has_unfinished_requests
    # Exactly at the limit is accepted.
    assert s.add_request("y", 7692, 500, 0.0).status == RequestStatus.WAITING


def test_over_length_message_exact_count_variant() -> None:
    msg = over_length_message(32768, 512, 32836, truncated_tokenization=False, with_parameter=False)
    assert msg == (
        "This model's maximum context length is 32768 tokens. However, you requested 512 "
        "output tokens and your prompt contains 32836 input tokens, for a total of 33348 "
        "tokens. Please reduce the length of the input prompt or the number of requested "
        "output tokens."
    )


def test_abort_frees_blocks_even_mid_step() -> None:
    s = make()
    s.add_request("a", 100, max_tokens=50, arrival_time=0.0)
    s.add_request("b", 100, max_tokens=50, arrival_time=0.0)
    _, res = s.step(0.0)
    out = s.schedule()
    aborted = s.abort_request("a", res.now)
    assert aborted is not None and aborted.status == RequestStatus.FINISHED_ABORTED
    res2 = s.update_from_output(out, res.now + s.step_time(out))
    assert res2.num_generated_tokens == 1
    assert s.kv.num_used_blocks == s.requests["b"].num_blocks
    assert s.abort_request("a", 0.0) is None
    assert s.num_aborted_total == 1
    # Aborting a waiting request works too.
    s.add_request("c", 10, 5, 0.0)
    assert s.abort_request("c", 0.0) is not None and s.num_waiting == 0


def test_bad_requests_raise() -> None:
    s = make()
    s.add_request("a", 10, 5, 0.0)
    with pytest.raises(RequestError, match="duplicate"):
        s.add_request("a", 10, 5, 0.0)
    with pytest.raises(RequestError):
        s.add_request("b", 0, 5, 0.0)
    with pytest.raises(RequestError):
        s.add_request("c", 10, 5, 0.0, output_tokens=6)


def test_schedule_twice_is_an_error() -> None:
    s = make()
    s.add_request("a", 10, 5, 0.0)
    s.schedule()
    with pytest.raises(RuntimeError):
        s.schedule()


def test_from_specs_sizes_the_cache() -> None:
    s = Scheduler.from_specs(get_model("llama-3.1-8b"), get_gpu("h100-80gb"), EngineConfig())
    assert s.memory_plan is not None
    assert s.kv.num_gpu_blocks == s.memory_plan.num_gpu_blocks > 20_000


def test_fast_forward_jumps_to_the_next_completion() -> None:
    s = make()
    a = s.add_request("a", 100, max_tokens=50, arrival_time=0.0)
    s.add_request("b", 30, max_tokens=20, arrival_time=0.0)
    _, res = s.step(0.0)
    ff = s.fast_forward(res.now)
    assert ff.steps == 19 and [r.request_id for r in ff.finished] == ["b"]
    assert ff.now == pytest.approx(res.now + s.timing.decode_run_time(2, 130, 19))
    ff2 = s.fast_forward(ff.now, until_time=ff.now + 0.05)
    assert 0 < ff2.steps < 30 and ff2.finished == []
    ff3 = s.fast_forward(ff2.now)
    assert a.finish_time == ff3.now and not s.has_unfinished_requests


def test_fast_forward_refuses_when_a_prefill_is_pending() -> None:
    s = make()
    s.add_request("a", 100, max_tokens=50, arrival_time=0.0)
    assert s.fast_forward(0.0).steps == 0  # nothing running yet
    _, res = s.step(0.0)
    s.add_request("b", 10, max_tokens=5, arrival_time=res.now)
    assert s.fast_forward(res.now).steps == 0  # b can be admitted next step


def test_preempted_request_reuses_its_cached_prefix() -> None:
    # vLLM v1 with prefix caching: the preempted request's full blocks stay
    # hashed in the free queue; re-admitted before they are reused, it only
    # computes the tokens past its cached prefix (at least one).
    s = make(num_blocks=5, block_size=4, max_model_len=16, max_num_batched_tokens=256)
    s.add_request("a", 8, max_tokens=4, arrival_time=0.0)
    b = s.add_request("b", 8, max_tokens=8, arrival_time=0.0)
    _, res = s.step(0.0)
    out, res = s.step(res.now)
    assert out.preempted_ids == ["b"]
    now = res.now
    while "b" not in out.admitted_ids:
        out, res = s.step(now)
        now = res.now
    i = out.scheduled.index(b)
    # 8 prompt tokens were computed (2 full blocks); a's 3 steps took the free
    # block and then freed its own, so both of b's blocks survived.
    assert b.num_computed_tokens + 0 >= 8
    assert out.num_scheduled_tokens[i] == 1
    drain(s, now)
    assert b.num_output_tokens == 8
    assert s.kv.num_free_blocks == 5
