"""vLLM v1 scheduling of one instance, as a pure state machine.

The contract, for both drivers::

    out = sched.schedule()                  # one pass over state, no time
    dt = sched.step_time(out)               # roofline model, seconds
    res = sched.update_from_output(out, now + dt)   # tokens, events

A wall-clock driver (the emulator) sleeps dt/speedup between schedule and
update; a virtual-time driver (the simulator) adds dt to its clock and, when
the batch is decode-only and nothing can change, calls `fast_forward` to
take many steps at once with identical results.

One `schedule()` pass, like vllm/v1/core/sched/scheduler.py:

1. Running requests first, in admission order, while the token budget
   (max_num_batched_tokens) lasts: each needs `num_tokens -
   num_computed_tokens` tokens (1 for a decode, the rest of the prompt for
   a partial prefill, capped by the budget). If its KV blocks cannot grow,
   the most recently admitted running request is preempted by recompute
   (blocks freed, num_computed_tokens = 0, pushed to the FRONT of the
   waiting queue) until the allocation succeeds or the request itself was
   the one preempted.
2. If nothing was preempted this step, waiting requests are admitted in
   FCFS order while the budget, max_num_seqs and free blocks allow; the
   first one that does not fit stops admission (head-of-line blocking).
   Without chunked prefill a prompt must fit whole in the remaining budget.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

from dualpool.engine.config import EngineConfig
from dualpool.engine.kv_cache import KVCacheManager
from dualpool.engine.memory import MemoryParams, MemoryPlan, plan_memory
from dualpool.engine.request import DecodeGroup, Request, RequestStatus, over_length_message
from dualpool.engine.specs import GPUSpec, ModelSpec
from dualpool.engine.timing import StepTimeModel, StepTimeParams
from dualpool.errors import RequestError

__all__ = ["FastForwardResult", "Scheduler", "SchedulerOutput", "StepResult"]

_RUNNING: Final = RequestStatus.RUNNING


@dataclass(slots=True, init=False)
class SchedulerOutput:
    """What one step computes. Flat, like vLLM's SchedulerOutput."""

    # Requests scheduled this step: running ones first, then newly admitted.
    scheduled: list[Request]
    # Tokens computed for scheduled[i] this step (aligned with `scheduled`).
    num_scheduled_tokens: list[int]
    # Sum of num_scheduled_tokens (<= max_num_batched_tokens).
    total_num_scheduled_tokens: int
    # len(scheduled).
    num_scheduled_seqs: int
    # Tokens of prompt (or recompute) chunks.
    num_prefill_tokens: int
    # Decode tokens = number of sequences decoding (one token each).
    num_decode_tokens: int
    # Cached context tokens read by attention: sum of num_computed_tokens
    # of the scheduled requests before this step.
    kv_read_tokens: int
    # (query, key) pairs attended, for attention FLOPs (see timing.py).
    attention_pairs: int
    # request ids preempted during this pass (now at the front of waiting).
    preempted_ids: list[str]
    # request ids admitted from waiting during this pass.
    admitted_ids: list[str]
    # -1: every scheduled request is applied one by one. Else group_size
    # decode-group members were scheduled (one token each), which
    # update_from_output advances together in O(1); they are the first
    # entries of `scheduled` unless the scheduler's list_decode_members is off.
    group_size: int
    group_listed: bool

    # An explicit __init__ (init=False): mypyc compiles it natively, where the one
    # dataclasses generates stays interpreted (~5x slower per instance).
    def __init__(
        self,
        scheduled: list[Request],
        num_scheduled_tokens: list[int],
        total_num_scheduled_tokens: int = 0,
        num_scheduled_seqs: int = 0,
        num_prefill_tokens: int = 0,
        num_decode_tokens: int = 0,
        kv_read_tokens: int = 0,
        attention_pairs: int = 0,
        preempted_ids: list[str] | None = None,
        admitted_ids: list[str] | None = None,
        group_size: int = -1,
        group_listed: bool = True,
    ) -> None:
        self.scheduled = scheduled
        self.num_scheduled_tokens = num_scheduled_tokens
        self.total_num_scheduled_tokens = total_num_scheduled_tokens
        self.num_scheduled_seqs = num_scheduled_seqs
        self.num_prefill_tokens = num_prefill_tokens
        self.num_decode_tokens = num_decode_tokens
        self.kv_read_tokens = kv_read_tokens
        self.attention_pairs = attention_pairs
        self.preempted_ids = [] if preempted_ids is None else preempted_ids
        self.admitted_ids = [] if admitted_ids is None else admitted_ids
        self.group_size = group_size
        self.group_listed = group_listed

    @property
    def is_empty(self) -> bool:
        return self.num_scheduled_seqs == 0

    @property
    def is_decode_only(self) -> bool:
        return self.num_prefill_tokens == 0 and self.num_decode_tokens > 0


@dataclass(slots=True, init=False)
class StepResult:
    """Events of one update: every request in them carries its timestamps."""

    # Time the step ended (the `now` passed to update_from_output).
    now: float
    # Requests that produced their first token at `now`.
    first_tokens: list[Request]
    # Requests that finished at `now` (status and finish_time set).
    finished: list[Request]
    # Output tokens produced by the step.
    num_generated_tokens: int

    # An explicit __init__ (init=False): mypyc compiles it natively, where the one
    # dataclasses generates stays interpreted (~5x slower per instance).
    def __init__(
        self,
        now: float,
        first_tokens: list[Request] | None = None,
        finished: list[Request] | None = None,
        num_generated_tokens: int = 0,
    ) -> None:
        self.now = now
        self.first_tokens = [] if first_tokens is None else first_tokens
        self.finished = [] if finished is None else finished
        self.num_generated_tokens = num_generated_tokens


@dataclass(slots=True, init=False)
class FastForwardResult:
    """What `fast_forward` did: `steps` decode steps ending at `now`."""

    steps: int
    now: float
    # Requests that finished at `now` (only when the last step completed them).
    finished: list[Request]
    num_generated_tokens: int

    # An explicit __init__ (init=False): mypyc compiles it natively, where the one
    # dataclasses generates stays interpreted (~5x slower per instance).
    def __init__(
        self,
        steps: int,
        now: float,
        finished: list[Request] | None = None,
        num_generated_tokens: int = 0,
    ) -> None:
        self.steps = steps
        self.now = now
        self.finished = [] if finished is None else finished
        self.num_generated_tokens = num_generated_tokens


class RunPlan:
    """The last decode run `_plan_decode_run` planned (any state change clears it).

    `now` it was planned at, `k` steps, `k_done` steps to the next
    completion, `ctx` the members' total context, `end` the run's end time
    (-1 until first needed).
    """

    __slots__ = ("ctx", "end", "k", "k_done", "now")

    def __init__(self, now: float, k: int, k_done: int, ctx: int, end: float) -> None:
        self.now = now
        self.k = k
        self.k_done = k_done
        self.ctx = ctx
        self.end = end


class Scheduler:
    """One instance's queue, batch and KV cache (vLLM v1 semantics).

    Plain class with explicit state; no clock reads, no I/O. Times are
    passed in (`arrival_time`, `now`) by the driver.
    """

    __slots__ = (
        "_adm_seq",
        "_chunked",
        "_ff_cache",
        "_g",
        "_max_batched",
        "_max_len",
        "_max_seqs",
        "_pending",
        "_prefix",
        "config",
        "generation_tokens_total",
        "kv",
        "list_decode_members",
        "memory_plan",
        "num_aborted_total",
        "num_finished_total",
        "num_preemptions_total",
        "num_rejected_total",
        "prompt_tokens_total",
        "requests",
        "running",
        "timing",
        "waiting",
    )

    def __init__(
        self,
        config: EngineConfig,
        num_gpu_blocks: int,
        timing: StepTimeModel,
        memory_plan: MemoryPlan | None = None,
    ) -> None:
        self.config = config
        # The limits read on every step, as plain attributes (the config is frozen).
        self._max_len = config.max_model_len
        self._max_batched = config.max_num_batched_tokens
        self._max_seqs = config.max_num_seqs
        self._chunked = config.enable_chunked_prefill
        self._prefix = config.enable_prefix_caching
        self.kv = KVCacheManager(num_gpu_blocks, config.block_size)
        self.timing = timing
        self.memory_plan = memory_plan
        # Unfinished requests by id.
        self.requests: dict[str, Request] = {}
        self.waiting: deque[Request] = deque()
        # In admission order (a dict used as an ordered set: O(1) removal): the
        # last one is the first to be preempted.
        self.running: dict[Request, None] = {}
        self._adm_seq = 0
        # The lazy decode group (request.DecodeGroup): every running request in
        # steady decode state (num_computed_tokens == num_tokens - 1, blocks as
        # allocate_slots leaves them) is a member; a decode step of all members
        # is g.d += 1.
        self._g = DecodeGroup(config.block_size)
        self._pending: SchedulerOutput | None = None
        # False: a fast step's SchedulerOutput.scheduled / num_scheduled_tokens
        # leave out the decode-group members (their count is group_size), which
        # saves building O(running) lists for drivers that never read them.
        self.list_decode_members = True
        # [now, k, steps to completion, context, end time or -1] of the last
        # decode-run plan; any state change clears it (see _plan_decode_run).
        self._ff_cache: RunPlan | None = None
        # Counters for /metrics (vllm:* names in the docstrings of properties).
        self.num_preemptions_total = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.num_rejected_total = 0
        self.num_aborted_total = 0
        self.num_finished_total = 0

    @classmethod
    def from_specs(
        cls,
        model: ModelSpec,
        gpu: GPUSpec,
        config: EngineConfig,
        step_params: StepTimeParams | None = None,
        memory_params: MemoryParams | None = None,
    ) -> Scheduler:
        """Size the KV cache like vLLM (raises InfeasibleConfigError) and build."""
        plan = plan_memory(model, gpu, config, memory_params)
        timing = StepTimeModel(model, gpu, config, step_params)
        return cls(config, plan.num_gpu_blocks, timing, plan)

    # -- metrics -------------------------------------------------------------

    @property
    def num_running(self) -> int:
        """vllm:num_requests_running."""
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        """vllm:num_requests_waiting."""
        return len(self.waiting)

    @property
    def kv_usage(self) -> float:
        """vllm:kv_cache_usage_perc (a fraction, 0..1)."""
        return self.kv.usage

    @property
    def has_unfinished_requests(self) -> bool:
        return bool(self.running or self.waiting)

    # -- requests ------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt_tokens: int,
        max_tokens: int,
        arrival_time: float,
        output_tokens: int | None = None,
    ) -> Request:
        """Queue a request, or reject it as vLLM's API server would.

        A request with prompt_tokens + max_tokens > max_model_len comes back
        FINISHED_REJECTED with vLLM's 400 message in `error` (never queued).
        `output_tokens` is how many tokens it will generate (default
        max_tokens).
        """
        if request_id in self.requests:
            raise RequestError(f"duplicate request id {request_id!r}", param="request_id")
        if prompt_tokens < 1:
            raise RequestError(f"prompt_tokens must be >= 1, got {prompt_tokens}", "prompt")
        if max_tokens < 1:
            raise RequestError(f"max_tokens must be >= 1, got {max_tokens}", "max_tokens")
        out = max_tokens if output_tokens is None else output_tokens
        if not 1 <= out <= max_tokens:
            raise RequestError(
                f"output_tokens must be in [1, max_tokens={max_tokens}], got {out}", "max_tokens"
            )
        req = Request(request_id, prompt_tokens, max_tokens, out, arrival_time)
        self._ff_cache = None
        max_len = self._max_len
        if prompt_tokens + max_tokens > max_len:
            req.status = RequestStatus.FINISHED_REJECTED
            req.error = over_length_message(max_len, max_tokens, prompt_tokens)
            req.finish_time = arrival_time
            self.num_rejected_total += 1
            return req
        self.requests[request_id] = req
        self.waiting.append(req)
        return req

    def abort_request(self, request_id: str, now: float) -> Request | None:
        """Drop a request (client disconnect); frees its blocks. None if unknown/finished."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        self._ff_cache = None
        if req.status == _RUNNING:
            if req._group is not None:
                self._g.leave(req)
            del self.running[req]
            self.kv.free(req)
        else:
            self.waiting.remove(req)
            self.kv.take_cached(req, 0)
        req.status = RequestStatus.FINISHED_ABORTED
        req.finish_time = now
        self.num_aborted_total += 1
        return req

    # -- one step ------------------------------------------------------------

    def _preempt(self, victim: Request) -> None:
        # NOTE: victims are never decode-group members (the slow path dissolves
        # the group first; the fast path only preempts the non-member tail).
        # With prefix caching its computed full blocks stay hashed in the free
        # queue (vLLM's _preempt_request -> kv_cache_manager.free).
        kv = self.kv
        cached = victim._computed // kv.block_size if self._prefix else 0
        kv.free_cached(victim, victim._blocks, min(cached, victim._blocks))
        victim._blocks = 0
        victim.status = RequestStatus.PREEMPTED
        victim._computed = 0
        victim.num_preemptions += 1
        self.num_preemptions_total += 1
        self.waiting.appendleft(victim)

    # -- the lazy decode group -------------------------------------------------

    def _dissolve(self) -> None:
        """Materialize every member (before a step the group cannot take)."""
        self._g.dissolve(self.running)

    def _regroup(self) -> None:
        for req in self.running:
            if (
                req._group is None
                and req._generated > 0
                and req._computed == req.prompt_tokens + req._generated - 1
            ):
                self._g.join(req)

    def _finish_group(self, key: int, now: float, finished: list[Request]) -> None:
        """Finish the members whose output target is reached at group step `key`."""
        g = self._g
        lst = g.pop_finishers(key)
        if not lst:
            return
        running = self.running
        requests = self.requests
        freed = 0
        for req in lst:
            freed += g.settle(req)
            req._blocks = 0
            req.status = (
                RequestStatus.FINISHED_LENGTH_CAPPED
                if req._generated >= req.max_tokens
                else RequestStatus.FINISHED_STOPPED
            )
            req.finish_time = now
            del requests[req.request_id]
            del running[req]
            finished.append(req)
        n = len(lst)
        g.n -= n
        self.num_finished_total += n
        self.kv.release(freed)

    # -- one step ------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        """Decide the next step; reserves KV blocks. Call update_from_output next."""
        if self._pending is not None:
            raise RuntimeError("schedule() called twice: apply the previous output first")
        self._ff_cache = None
        running = self.running
        g = self._g
        gn = g.n
        nrun = len(running)
        budget = self._max_batched
        kv = self.kv
        # The fast path: every running request but possibly the last is a group
        # member (decoding), and all members get their token and next slot.
        # Then the running pass costs O(1) for them; otherwise step eagerly.
        tail: Request | None = None
        if gn != nrun:
            if gn != nrun - 1:
                return self._schedule_slow()
            tail = next(reversed(running))
            if tail._group is not None:
                return self._schedule_slow()
        prefill_tokens = decode_tokens = kv_read = pairs = 0
        if gn:
            if gn > budget:
                return self._schedule_slow()
            need = g.due(0)
            if need > kv.num_free_blocks:
                return self._schedule_slow()
            kv.take(need)
            g.pending = 1
            budget -= gn
            kv_read = g.context()
            pairs = kv_read + gn
            decode_tokens = gn
        listed = self.list_decode_members
        if listed:
            scheduled = list(running)
            counts = [1] * gn
        else:
            scheduled = [tail] if tail is not None else []
            counts = []
        preempted: list[str] = []
        if tail is not None:
            if budget > 0:
                p = tail._computed
                num_new = tail.prompt_tokens + tail._generated - p
                if num_new > budget:
                    num_new = budget
                if kv.allocate_slots(tail, num_new) is None:
                    # The most recently admitted request is the tail itself.
                    del running[tail]
                    self._preempt(tail)
                    preempted.append(tail.request_id)
                    scheduled.pop()
                else:
                    counts.append(num_new)
                    budget -= num_new
                    kv_read += p
                    pairs += num_new * p + num_new * (num_new + 1) // 2
                    if (
                        num_new == 1
                        and tail._generated > 0
                        and p == tail.prompt_tokens + tail._generated - 1
                    ):
                        decode_tokens += 1
                    else:
                        prefill_tokens += num_new
            else:
                scheduled.pop()
        out = self._admit(
            scheduled, counts, preempted, budget, prefill_tokens, decode_tokens, kv_read, pairs, gn
        )
        if not listed:
            out.group_listed = False
            out.num_scheduled_seqs += gn
        return out

    def _schedule_slow(self) -> SchedulerOutput:
        """The general running pass, request by request (group dissolved)."""
        self._dissolve()
        kv = self.kv
        budget = self._max_batched
        scheduled: list[Request] = []
        counts: list[int] = []
        preempted: list[str] = []
        prefill_tokens = decode_tokens = kv_read = pairs = 0
        running = self.running
        order = list(running)
        end = len(order)
        i = 0
        while i < end and budget > 0:
            req = order[i]
            num_new = req.prompt_tokens + req._generated - req._computed
            if num_new > budget:
                num_new = budget
            while kv.allocate_slots(req, num_new) is None:
                # NOTE: FCFS preemption takes the most recently admitted request,
                # the end of `running`; it has not been scheduled this pass
                # (scheduled ones sit before index i) unless it is `req` itself.
                end -= 1
                victim = order[end]
                del running[victim]
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is req:
                    break
            else:
                p = req._computed
                scheduled.append(req)
                counts.append(num_new)
                budget -= num_new
                kv_read += p
                pairs += num_new * p + num_new * (num_new + 1) // 2
                if (
                    num_new == 1
                    and req._generated > 0
                    and p == req.prompt_tokens + req._generated - 1
                ):
                    decode_tokens += 1
                else:
                    prefill_tokens += num_new
                i += 1
                continue
            break  # the request could not be scheduled: stop the running pass
        return self._admit(
            scheduled, counts, preempted, budget, prefill_tokens, decode_tokens, kv_read, pairs, -1
        )

    def _admit(
        self,
        scheduled: list[Request],
        counts: list[int],
        preempted: list[str],
        budget: int,
        prefill_tokens: int,
        decode_tokens: int,
        kv_read: int,
        pairs: int,
        group_size: int,
    ) -> SchedulerOutput:
        """Admission from the waiting queue (FCFS, head-of-line blocking); builds the output."""
        admitted: list[str] = []
        waiting = self.waiting
        if not preempted and waiting:
            kv = self.kv
            running = self.running
            max_seqs = self._max_seqs
            chunked = self._chunked
            bs = kv.block_size
            while waiting and budget > 0 and len(running) < max_seqs:
                req = waiting[0]
                total = req.prompt_tokens + req._generated
                # A waiting request holds no blocks; after a preemption its
                # surviving cached prefix counts as computed (vLLM's
                # get_computed_blocks, at most num_tokens - 1 tokens).
                hit = 0
                cached = req._cseg is not None
                if cached:
                    hit = min(kv.cached_blocks(req), (total - 1) // bs)
                p = hit * bs
                num_new = total - p
                if num_new > budget:
                    if not chunked:
                        break
                    num_new = budget
                need = -(-(p + num_new) // bs)
                if need > kv.num_free_blocks:
                    break
                if cached:
                    kv.take_cached(req, hit)  # (a no-op if evicted meanwhile)
                kv.take(need - hit)
                req._blocks = need
                req._computed = p
                waiting.popleft()
                req.status = _RUNNING
                self._adm_seq += 1
                req._admission = self._adm_seq
                running[req] = None
                admitted.append(req.request_id)
                scheduled.append(req)
                counts.append(num_new)
                budget -= num_new
                prefill_tokens += num_new
                kv_read += p
                pairs += num_new * p + num_new * (num_new + 1) // 2

        out = SchedulerOutput(
            scheduled,
            counts,
            self._max_batched - budget,
            len(scheduled),
            prefill_tokens,
            decode_tokens,
            kv_read,
            pairs,
            preempted,
            admitted,
            group_size,
        )
        self._pending = out
        return out

    def step_time(self, output: SchedulerOutput) -> float:
        """Seconds the step takes (timing model); 0 for an empty step."""
        # timing.step_time(output), spelled out: it reads a StepShape protocol,
        # which compiled code reads attribute by attribute generically.
        return self.timing.step_time_raw(
            output.total_num_scheduled_tokens,
            output.num_scheduled_seqs,
            output.kv_read_tokens,
            output.attention_pairs,
        )

    def update_from_output(self, output: SchedulerOutput, now: float) -> StepResult:
        """Apply a step that ended at `now`: advance tokens, emit events."""
        if output is not self._pending:
            raise RuntimeError("update_from_output() expects the output of the last schedule()")
        self._pending = None
        result = StepResult(now)
        generated = 0
        gs = output.group_size
        scheduled = output.scheduled
        counts = output.num_scheduled_tokens
        if gs >= 0:
            g = self._g
            g.pending = 0
            if gs:
                # Every member (minus any aborted since schedule()) decodes one token.
                g.d += 1
                generated = g.n
                self._finish_group(g.d, now, result.finished)
                if output.group_listed:
                    scheduled = scheduled[gs:]
                    counts = counts[gs:]
        running = self.running
        for req, n in zip(scheduled, counts, strict=True):
            if req.status != _RUNNING:
                continue  # aborted between schedule() and now
            c = req._computed + n
            req._computed = c
            if c < req.prompt_tokens + req._generated:
                continue  # a partial prefill: no token sampled yet
            req._generated += 1
            generated += 1
            if req.first_token_time is None:
                req.first_token_time = now
                self.prompt_tokens_total += req.prompt_tokens
                result.first_tokens.append(req)
            if req._generated >= req.output_tokens:
                self._finish(req, now)
                del running[req]
                result.finished.append(req)
            elif gs >= 0:
                self._g.join(req)  # now decoding
        if gs < 0:
            self._regroup()
        self.generation_tokens_total += generated
        result.num_generated_tokens = generated
        return result

    def _finish(self, req: Request, now: float) -> None:
        # A non-member (members are unlinked first): the raw counters are current.
        req.status = (
            RequestStatus.FINISHED_LENGTH_CAPPED
            if req._generated >= req.max_tokens
            else RequestStatus.FINISHED_STOPPED
        )
        req.finish_time = now
        self.kv.release(req._blocks)
        req._blocks = 0
        del self.requests[req.request_id]
        self.num_finished_total += 1

    def step(self, now: float) -> tuple[SchedulerOutput, StepResult]:
        """schedule + step_time + update in one call (virtual-time drivers)."""
        out = self.schedule()
        return out, self.update_from_output(out, now + self.step_time(out))

    # -- fast path -------------------------------------------------------------

    def fast_forward(
        self,
        now: float,
        *,
        max_steps: int | None = None,
        until_time: float | None = None,
    ) -> FastForwardResult:
        """Take k decode-only steps at once, exactly as k step() calls would.

        Applies only when every running request is decoding and the next
        steps cannot change the batch; otherwise returns steps=0 and the
        driver calls step(). k is the minimum of:

        - steps to the next completion (min remaining output tokens);
        - steps before a KV block allocation would fail (the step that would
          preempt is left to step());
        - max_steps;
        - steps that START strictly before until_time (an event loop adds
          arrivals at step boundaries, so a step that starts before an
          arrival runs without it).

        Cost: O(block_size) from the decode group, plus O(log k) for the
        until_time search, plus the requests that finish.
        """
        plan = self._plan_decode_run(now, max_steps, until_time)
        if plan is None:
            return FastForwardResult(0, now)
        k, k_done, ctx = plan
        return self._apply_decode_run(now, k, k_done, ctx, self._run_end(now, k, ctx))

    def peek_fast_forward(
        self,
        now: float,
        *,
        max_steps: int | None = None,
        until_time: float | None = None,
    ) -> tuple[int, float]:
        """(steps, end time) `fast_forward` would take now, without changing state.

        A discrete-event driver plans a decode run with it, and applies it
        (or the part of it before an arrival, with `until_time`) only when
        the run ends or something happens to the instance.
        """
        plan = self._plan_decode_run(now, max_steps, until_time)
        if plan is None:
            return 0, now
        k, _, ctx = plan
        return k, self._run_end(now, k, ctx)

    def finish_run(self, now: float) -> tuple[FastForwardResult, int, float]:
        """`fast_forward(now)`, then `peek_fast_forward` at its end, in one call.

        For a discrete-event driver at the end of a planned decode run: returns
        the run's result and the next run's (steps, end time), (0, end) when
        there is none (no requests left, or the next step must be a step()).
        The state changes exactly as with the two calls.
        """
        plan = self._plan_decode_run(now, None, None)
        if plan is None:
            k, end = self.peek_fast_forward(now)
            return FastForwardResult(0, now), k, end
        k, k_done, ctx = plan
        res = self._apply_decode_run(now, k, k_done, ctx, self._run_end(now, k, ctx))
        t = res.now
        if not self.requests:
            return res, 0, t
        # peek_fast_forward(t): _apply_decode_run cleared the plan cache.
        nxt = self._plan_full_run()
        if nxt is None:
            return res, 0, t
        k, k_done, ctx = nxt
        end = t + self.timing.decode_run_time(len(self.running), ctx, k)
        self._ff_cache = RunPlan(t, k, k_done, ctx, end)
        return res, k, end

    def _run_end(self, now: float, k: int, ctx: int) -> float:
        """End time of a k-step run planned at now; the whole run's is cached."""
        cache = self._ff_cache
        if cache is not None and cache.k == k and cache.now == now:
            end = cache.end
            if end < 0.0:
                end = cache.end = now + self.timing.decode_run_time(len(self.running), ctx, k)
            return end
        return now + self.timing.decode_run_time(len(self.running), ctx, k)

    def _plan_decode_run(
        self, now: float, max_steps: int | None, until_time: float | None
    ) -> tuple[int, int, int] | None:
        """(k, steps to the next completion, total context) or None (no run)."""
        if max_steps is not None and max_steps <= 0:
            return None
        if until_time is not None and until_time <= now:
            return None
        cache = self._ff_cache
        if cache is not None and cache.now == now:
            # NOTE: a driver peeks a run, then applies it (or its part before an
            # arrival) without changing the state in between: reuse the O(n) scan.
            k = cache.k
            k_done = cache.k_done
            ctx = cache.ctx
        else:
            plan = self._plan_full_run()
            if plan is None:
                return None
            k, k_done, ctx = plan
            # the end time of the whole run is filled in when first needed
            self._ff_cache = RunPlan(now, k, k_done, ctx, -1.0)
        timing = self.timing
        if max_steps is not None and max_steps < k:
            k = max_steps
        if until_time is not None:
            n = len(self.running)
            budget = until_time - now
            m = timing.steps_within(n, ctx, budget, limit=k)
            if m > 0 and timing.decode_run_time(n, ctx, m) >= budget:
                m -= 1  # start strictly before until_time
            if m + 1 < k:
                k = m + 1
        return k, k_done, ctx

    def _plan_full_run(self) -> tuple[int, int, int] | None:
        """(longest k, steps to the next completion, total context) or None.

        O(block_size + log n) from the decode group's aggregates.
        """
        running = self.running
        n = len(running)
        if self._pending is not None or n == 0 or n > self._max_batched:
            return None
        if self._g.n != n:
            return None  # a prefill (or recompute) is in flight
        g = self._g
        bs = g.block_size
        d = g.d
        hist = g.hist
        free = self.kv.num_free_blocks
        need_next = hist[-d % bs]  # blocks the next step allocates

        # The waiting queue. Admission runs after the running requests have
        # taken their blocks, and during a decode-only run the running set,
        # the budget left (max_num_batched_tokens - n) and the head of the
        # queue are fixed while free blocks only shrink (decode grows
        # contexts; nothing finishes before the last step of the run). So if
        # the head cannot be admitted at the next step it cannot be at any
        # step of the run: k may span steps with a non-empty queue only when
        # its head is blocked by max_num_seqs, the token budget, or blocks.
        if self.waiting and n < self._max_seqs:
            left_budget = self._max_batched - n
            head = self.waiting[0]
            total = head.prompt_tokens + head._generated
            p = 0
            if head._cseg is not None:
                # Its cached prefix after the next step's allocations. Along the
                # run, each evicted block of it lowers both its need and the
                # free blocks by one: free - need still only shrinks.
                p = min(self.kv.cached_blocks(head, need_next), (total - 1) // bs) * bs
            tokens = total - p
            if left_budget > 0 and (self._chunked or tokens <= left_budget):
                chunk = min(tokens, left_budget)
                if -(-(p + chunk) // bs) <= free - need_next:
                    return None  # the next step admits it

        k_done = g.next_finish()

        # Steps before a block allocation fails. A member with c computed
        # tokens needs a new block at steps j with (c + j - 1) % bs == 0, so
        # every period of bs steps adds exactly one block per member. With H
        # free blocks, allocation number H + 1 (the first that fails) falls
        # in period q = H // n at the (r + 1)-th smallest offset, r = H % n.
        q, r = divmod(free, n)
        if q * bs >= k_done:
            k = k_done  # the blocks last beyond the next completion (o_fail >= 1)
        else:
            seen = 0
            o_fail = bs
            for o in range(1, bs + 1):
                seen += hist[-(d + o - 1) % bs]
                if seen > r:
                    o_fail = o
                    break
            k = min(k_done, q * bs + o_fail - 1)
        if k <= 0:
            return None
        return k, k_done, g.context()

    def _apply_decode_run(
        self, now: float, k: int, k_done: int, ctx: int, end: float
    ) -> FastForwardResult:
        self._ff_cache = None
        n = len(self.running)
        g = self._g
        bs = g.block_size
        d = g.d
        hist = g.hist
        qk, rk = divmod(k, bs)
        used = qk * n
        for j in range(rk):
            used += hist[-(d + j) % bs]
        g.d = d + k
        self.kv.take(used)
        generated = n * k
        self.generation_tokens_total += generated
        result = FastForwardResult(k, end, num_generated_tokens=generated)
        if k == k_done:
            self._finish_group(d + k, end, result.finished)
        return result
