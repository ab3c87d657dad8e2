"""The scheduler as it was before the lazy decode group (commit 63a3695), kept
verbatim as the reference the optimised engine must match step for step.

Test-only; do not optimise.
"""

# ruff: noqa
# mypy: ignore-errors

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from dualpool.engine.config import EngineConfig
from dualpool.engine.request import FINISH_REASONS, RequestStatus, over_length_message
from dualpool.engine.timing import StepTimeModel
from dualpool.errors import RequestError


@dataclass(slots=True, eq=False)
class Request:  # the old dataclass
    """One request's explicit state; mutated only by the Scheduler."""

    request_id: str
    prompt_tokens: int
    # The client's max_tokens (what the length check uses).
    max_tokens: int
    # Tokens this request will actually generate (<= max_tokens): the
    # workload's output length; generation stops there (EOS).
    output_tokens: int
    arrival_time: float
    num_computed_tokens: int = 0
    num_output_tokens: int = 0
    status: RequestStatus = RequestStatus.WAITING
    num_preemptions: int = 0
    # KV blocks held (managed by KVCacheManager).
    num_blocks: int = 0
    first_token_time: float | None = None
    finish_time: float | None = None
    # The 400 message when status is FINISHED_REJECTED.
    error: str | None = None

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens (the length of the known sequence)."""
        return self.prompt_tokens + self.num_output_tokens

    @property
    def is_finished(self) -> bool:
        return self.status > RequestStatus.PREEMPTED

    @property
    def finish_reason(self) -> str | None:
        return FINISH_REASONS.get(self.status)

    @property
    def ttft(self) -> float | None:
        """Time to first token (s), from arrival."""
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    @property
    def e2e_latency(self) -> float | None:
        if self.finish_time is None:
            return None
        return self.finish_time - self.arrival_time

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first (s)."""
        if self.finish_time is None or self.first_token_time is None:
            return None
        if self.num_output_tokens <= 1:
            return 0.0
        return (self.finish_time - self.first_token_time) / (self.num_output_tokens - 1)


class KVCacheManager:
    """Free/used block counts of one instance, and an explicit free queue.

    Prefix caching, block by block: the free queue holds one tag per free
    block, None or (request, i) for a preempted request's cached full block
    i. Allocations pop from the head (evicting), frees append at the tail,
    a preempted request's blocks in reverse order (vLLM's free order).
    """

    __slots__ = ("block_size", "cached", "free_queue", "num_free_blocks", "num_gpu_blocks")

    def __init__(self, num_gpu_blocks: int, block_size: int) -> None:
        if num_gpu_blocks <= 0 or block_size <= 0:
            raise ValueError(
                f"need positive blocks and block_size, got {num_gpu_blocks}, {block_size}"
            )
        self.num_gpu_blocks = num_gpu_blocks
        self.block_size = block_size
        self.num_free_blocks = num_gpu_blocks
        self.free_queue: deque[tuple[Request, int] | None] = deque([None] * num_gpu_blocks)
        # request -> indices of its full blocks still cached in the free queue
        self.cached: dict[Request, set[int]] = {}

    def _pop(self, n: int) -> None:
        for _ in range(n):
            tag = self.free_queue.popleft()
            if tag is not None:
                self.cached[tag[0]].discard(tag[1])
        self.num_free_blocks -= n

    def _push(self, n: int) -> None:
        self.free_queue.extend([None] * n)
        self.num_free_blocks += n

    def prefix_hit(self, request: Request) -> int:
        """Leading full blocks of the request still cached."""
        have = self.cached.get(request, set())
        h = 0
        while h in have:
            h += 1
        return h

    def take_prefix(self, request: Request, n: int) -> None:
        """Take the request's first n cached blocks out of the free queue; forget the rest."""
        self.cached.pop(request, None)
        q = self.free_queue
        for i, tag in enumerate(q):
            if tag is not None and tag[0] is request:
                q[i] = None if tag[1] >= n else (request, -1)
        kept = deque(t for t in q if t is None or t[1] != -1)
        self.free_queue = kept
        self.num_free_blocks -= n

    def free_preempted(self, request: Request, cached: int) -> None:
        """Free a preempted request's blocks: uncached ones, then cached last to first."""
        self.free_queue.extend([None] * (request.num_blocks - cached))
        self.free_queue.extend((request, i) for i in reversed(range(cached)))
        if cached:
            self.cached[request] = set(range(cached))
        self.num_free_blocks += request.num_blocks
        request.num_blocks = 0

    @property
    def num_used_blocks(self) -> int:
        return self.num_gpu_blocks - self.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of blocks in use (vllm:kv_cache_usage_perc, as 0..1)."""
        return self.num_used_blocks / self.num_gpu_blocks

    def blocks_needed(self, request: Request, num_new_tokens: int) -> int:
        """Blocks to add so the request covers its computed + new tokens."""
        total = request.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - request.num_blocks)

    def allocate_slots(self, request: Request, num_new_tokens: int) -> int | None:
        """Grow the request's blocks; the number added, or None if short."""
        need = self.blocks_needed(request, num_new_tokens)
        if need > self.num_free_blocks:
            return None
        self._pop(need)
        request.num_blocks += need
        return need

    def free(self, request: Request) -> None:
        """Return all of the request's blocks to the pool."""
        self._push(request.num_blocks)
        request.num_blocks = 0


_RUNNING = RequestStatus.RUNNING


@dataclass(slots=True)
class SchedulerOutput:
    """What one step computes. Flat, like vLLM's SchedulerOutput."""

    # Requests scheduled this step: running ones first, then newly admitted.
    scheduled: list[Request]
    # Tokens computed for scheduled[i] this step (aligned with `scheduled`).
    num_scheduled_tokens: list[int]
    # Sum of num_scheduled_tokens (<= max_num_batched_tokens).
    total_num_scheduled_tokens: int = 0
    # len(scheduled).
    num_scheduled_seqs: int = 0
    # Tokens of prompt (or recompute) chunks.
    num_prefill_tokens: int = 0
    # Decode tokens = number of sequences decoding (one token each).
    num_decode_tokens: int = 0
    # Cached context tokens read by attention: sum of num_computed_tokens
    # of the scheduled requests before this step.
    kv_read_tokens: int = 0
    # (query, key) pairs attended, for attention FLOPs (see timing.py).
    attention_pairs: int = 0
    # request ids preempted during this pass (now at the front of waiting).
    preempted_ids: list[str] = field(default_factory=list)
    # request ids admitted from waiting during this pass.
    admitted_ids: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return self.num_scheduled_seqs == 0

    @property
    def is_decode_only(self) -> bool:
        return self.num_prefill_tokens == 0 and self.num_decode_tokens > 0


@dataclass(slots=True)
class StepResult:
    """Events of one update: every request in them carries its timestamps."""

    # Time the step ended (the `now` passed to update_from_output).
    now: float
    # Requests that produced their first token at `now`.
    first_tokens: list[Request] = field(default_factory=list)
    # Requests that finished at `now` (status and finish_time set).
    finished: list[Request] = field(default_factory=list)
    # Output tokens produced by the step.
    num_generated_tokens: int = 0


@dataclass(slots=True)
class FastForwardResult:
    """What `fast_forward` did: `steps` decode steps ending at `now`."""

    steps: int
    now: float
    # Requests that finished at `now` (only when the last step completed them).
    finished: list[Request] = field(default_factory=list)
    num_generated_tokens: int = 0


class Scheduler:
    """One instance's queue, batch and KV cache (vLLM v1 semantics).

    Plain class with explicit state; no clock reads, no I/O. Times are
    passed in (`arrival_time`, `now`) by the driver.
    """

    __slots__ = (
        "_ff_cache",
        "_pending",
        "config",
        "generation_tokens_total",
        "kv",
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
        memory_plan: object = None,
    ) -> None:
        self.config = config
        self.kv = KVCacheManager(num_gpu_blocks, config.block_size)
        self.timing = timing
        self.memory_plan = memory_plan
        # Unfinished requests by id.
        self.requests: dict[str, Request] = {}
        self.waiting: deque[Request] = deque()
        # In admission order: the last one is the first to be preempted.
        self.running: list[Request] = []
        self._pending: SchedulerOutput | None = None
        # (now, k, steps to completion, context) of the last decode-run plan; any
        # state change clears it (see _plan_decode_run).
        self._ff_cache: tuple[float, int, int, int] | None = None
        # Counters for /metrics (vllm:* names in the docstrings of properties).
        self.num_preemptions_total = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.num_rejected_total = 0
        self.num_aborted_total = 0
        self.num_finished_total = 0

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
        max_len = self.config.max_model_len
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
            self.running.remove(req)
            self.kv.free(req)
        else:
            self.waiting.remove(req)
            if req in self.kv.cached:
                self.kv.take_prefix(req, 0)
        req.status = RequestStatus.FINISHED_ABORTED
        req.finish_time = now
        self.num_aborted_total += 1
        return req

    # -- one step ------------------------------------------------------------

    def _preempt(self, victim: Request) -> None:
        kv = self.kv
        if self.config.enable_prefix_caching:
            kv.free_preempted(
                victim, min(victim.num_computed_tokens // kv.block_size, victim.num_blocks)
            )
        else:
            kv.free(victim)
        victim.status = RequestStatus.PREEMPTED
        victim.num_computed_tokens = 0
        victim.num_preemptions += 1
        self.num_preemptions_total += 1
        self.waiting.appendleft(victim)

    def schedule(self) -> SchedulerOutput:
        """Decide the next step; reserves KV blocks. Call update_from_output next."""
        if self._pending is not None:
            raise RuntimeError("schedule() called twice: apply the previous output first")
        self._ff_cache = None
        cfg = self.config
        kv = self.kv
        budget = cfg.max_num_batched_tokens
        scheduled: list[Request] = []
        counts: list[int] = []
        preempted: list[str] = []
        prefill_tokens = decode_tokens = kv_read = pairs = 0

        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            num_new = req.num_tokens - req.num_computed_tokens
            if num_new > budget:
                num_new = budget
            while kv.allocate_slots(req, num_new) is None:
                # NOTE: FCFS preemption takes the most recently admitted request,
                # the end of `running`; it has not been scheduled this pass
                # (scheduled ones sit before index i) unless it is `req` itself.
                victim = running.pop()
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is req:
                    break
            else:
                p = req.num_computed_tokens
                scheduled.append(req)
                counts.append(num_new)
                budget -= num_new
                kv_read += p
                pairs += num_new * p + num_new * (num_new + 1) // 2
                if num_new == 1 and req.num_output_tokens > 0 and p == req.num_tokens - 1:
                    decode_tokens += 1
                else:
                    prefill_tokens += num_new
                i += 1
                continue
            break  # the request could not be scheduled: stop the running pass

        admitted: list[str] = []
        if not preempted:
            waiting = self.waiting
            max_seqs = cfg.max_num_seqs
            chunked = cfg.enable_chunked_prefill
            while waiting and budget > 0 and len(running) < max_seqs:
                req = waiting[0]
                # After a preemption the surviving cached prefix counts as computed
                # (at most num_tokens - 1 tokens).
                hit = min(kv.prefix_hit(req), (req.num_tokens - 1) // kv.block_size)
                p = hit * kv.block_size
                num_new = req.num_tokens - p
                if num_new > budget:
                    if not chunked:
                        break
                    num_new = budget
                if -(-(p + num_new) // kv.block_size) > kv.num_free_blocks:
                    break
                if req in kv.cached:
                    kv.take_prefix(req, hit)
                req.num_blocks = hit
                req.num_computed_tokens = p
                kv.allocate_slots(req, num_new)
                waiting.popleft()
                req.status = _RUNNING
                running.append(req)
                admitted.append(req.request_id)
                scheduled.append(req)
                counts.append(num_new)
                budget -= num_new
                prefill_tokens += num_new
                kv_read += p
                pairs += num_new * p + num_new * (num_new + 1) // 2

        out = SchedulerOutput(
            scheduled=scheduled,
            num_scheduled_tokens=counts,
            total_num_scheduled_tokens=cfg.max_num_batched_tokens - budget,
            num_scheduled_seqs=len(scheduled),
            num_prefill_tokens=prefill_tokens,
            num_decode_tokens=decode_tokens,
            kv_read_tokens=kv_read,
            attention_pairs=pairs,
            preempted_ids=preempted,
            admitted_ids=admitted,
        )
        self._pending = out
        return out

    def step_time(self, output: SchedulerOutput) -> float:
        """Seconds the step takes (timing model); 0 for an empty step."""
        return self.timing.step_time(output)

    def update_from_output(self, output: SchedulerOutput, now: float) -> StepResult:
        """Apply a step that ended at `now`: advance tokens, emit events."""
        if output is not self._pending:
            raise RuntimeError("update_from_output() expects the output of the last schedule()")
        self._pending = None
        result = StepResult(now)
        generated = 0
        any_finished = False
        for req, n in zip(output.scheduled, output.num_scheduled_tokens, strict=True):
            if req.status != _RUNNING:
                continue  # aborted between schedule() and now
            req.num_computed_tokens += n
            if req.num_computed_tokens < req.num_tokens:
                continue  # a partial prefill: no token sampled yet
            req.num_output_tokens += 1
            generated += 1
            if req.first_token_time is None:
                req.first_token_time = now
                self.prompt_tokens_total += req.prompt_tokens
                result.first_tokens.append(req)
            if req.num_output_tokens >= req.output_tokens:
                self._finish(req, now)
                result.finished.append(req)
                any_finished = True
        if any_finished:
            self.running = [r for r in self.running if r.status == _RUNNING]
        self.generation_tokens_total += generated
        result.num_generated_tokens = generated
        return result

    def _finish(self, req: Request, now: float) -> None:
        req.status = (
            RequestStatus.FINISHED_LENGTH_CAPPED
            if req.num_output_tokens >= req.max_tokens
            else RequestStatus.FINISHED_STOPPED
        )
        req.finish_time = now
        self.kv.free(req)
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

        Cost: O(len(running)) plus O(log k) for the until_time search.
        """
        plan = self._plan_decode_run(now, max_steps, until_time)
        if plan is None:
            return FastForwardResult(0, now)
        k, k_done, ctx = plan
        return self._apply_decode_run(now, k, k_done, ctx)

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
        return k, now + self.timing.decode_run_time(len(self.running), ctx, k)

    def _plan_decode_run(
        self, now: float, max_steps: int | None, until_time: float | None
    ) -> tuple[int, int, int] | None:
        """(k, steps to the next completion, total context) or None (no run)."""
        if max_steps is not None and max_steps <= 0:
            return None
        if until_time is not None and until_time <= now:
            return None
        cache = self._ff_cache
        if cache is not None and cache[0] == now:
            # NOTE: a driver peeks a run, then applies it (or its part before an
            # arrival) without changing the state in between: reuse the O(n) scan.
            _, k, k_done, ctx = cache
        else:
            plan = self._plan_full_run()
            if plan is None:
                return None
            k, k_done, ctx = plan
            self._ff_cache = (now, k, k_done, ctx)
        timing = self.timing
        if max_steps is not None and max_steps < k:
            k = max_steps
        if until_time is not None:
            n = len(self.running)
            budget = until_time - now
            m = timing.steps_within(n, ctx, budget)
            if m > 0 and timing.decode_run_time(n, ctx, m) >= budget:
                m -= 1  # start strictly before until_time
            if m + 1 < k:
                k = m + 1
        return k, k_done, ctx

    def _plan_full_run(self) -> tuple[int, int, int] | None:
        """(longest k, steps to the next completion, total context) or None; O(n)."""
        running = self.running
        n = len(running)
        cfg = self.config
        if self._pending is not None or n == 0 or n > cfg.max_num_batched_tokens:
            return None
        bs = cfg.block_size
        kv = self.kv
        # O(1) refusals before the O(n) scan. A partial prefill is always the
        # most recently admitted request (it took the rest of a step's budget),
        # so the last running request tells whether a prefill is in flight...
        last = running[-1]
        if last.num_output_tokens == 0 or last.num_computed_tokens != last.num_tokens - 1:
            return None
        # ...and a queue head that fits even if every running request takes a
        # block next step is admitted next step (the exact check is below).
        if self.waiting and n < cfg.max_num_seqs:
            left_budget = cfg.max_num_batched_tokens - n
            tokens = self.waiting[0].num_tokens
            if (
                left_budget > 0
                and (cfg.enable_chunked_prefill or tokens <= left_budget)
                and -(-min(tokens, left_budget) // bs) <= kv.num_free_blocks - n
            ):
                return None
        ctx = 0
        k_done = -1
        need_next = 0  # blocks the next step allocates
        offsets = [0] * (bs + 1)  # offsets[o]: requests whose next block is due at step o
        for req in running:
            c = req.num_computed_tokens
            if req.num_output_tokens == 0 or c != req.num_tokens - 1:
                return None  # a prefill (or recompute) is in flight
            ctx += c
            left = req.output_tokens - req.num_output_tokens
            if k_done < 0 or left < k_done:
                k_done = left
            o = req.num_blocks * bs - c + 1  # first step needing a new block
            if not 1 <= o <= bs:
                return None  # not the block layout allocate_slots leaves
            offsets[o] += 1
            if o == 1:
                need_next += 1

        # Steps before a block allocation fails. Request i needs a new block at
        # steps o_i, o_i + bs, o_i + 2 bs, ... with o_i in [1, bs], so every
        # period of bs steps adds exactly one block per request. With H free
        # blocks, allocation number H + 1 (the first that fails) falls in
        # period q = H // n at the (r + 1)-th smallest offset, r = H % n.
        free = kv.num_free_blocks
        q, r = divmod(free, n)
        seen = 0
        o_fail = bs
        for o in range(1, bs + 1):
            seen += offsets[o]
            if seen > r:
                o_fail = o
                break
        k = min(k_done, q * bs + o_fail - 1)
        if k <= 0:
            return None

        # The waiting queue. Admission runs after the running requests have
        # taken their blocks, and during a decode-only run the running set,
        # the budget left (max_num_batched_tokens - n) and the head of the
        # queue are fixed while free blocks only shrink (decode grows
        # contexts; nothing finishes before the last step of the run). So if
        # the head cannot be admitted at the next step it cannot be at any
        # step of the run: k may span steps with a non-empty queue only when
        # its head is blocked by max_num_seqs, the token budget, or blocks.
        if self.waiting:
            cfg = self.config
            left_budget = cfg.max_num_batched_tokens - n
            head = self.waiting[0]
            tokens = head.num_tokens
            fits_budget = cfg.enable_chunked_prefill or tokens <= left_budget
            if n < cfg.max_num_seqs and left_budget > 0 and fits_budget:
                chunk = min(tokens, left_budget)
                if -(-chunk // bs) <= free - need_next:
                    return None  # the next step admits it
        return k, k_done, ctx

    def _apply_decode_run(self, now: float, k: int, k_done: int, ctx: int) -> FastForwardResult:
        self._ff_cache = None
        running = self.running
        n = len(running)
        bs = self.config.block_size
        end = now + self.timing.decode_run_time(n, ctx, k)
        used = 0
        for req in running:
            c = req.num_computed_tokens + k
            req.num_computed_tokens = c
            req.num_output_tokens += k
            blocks = -(-c // bs)
            used += blocks - req.num_blocks
            req.num_blocks = blocks
        self.kv.num_free_blocks -= used
        generated = n * k
        self.generation_tokens_total += generated
        result = FastForwardResult(k, end, num_generated_tokens=generated)
        if k == k_done:
            for req in running:
                if req.num_output_tokens >= req.output_tokens:
                    self._finish(req, end)
                    result.finished.append(req)
            self.running = [r for r in running if r.status == _RUNNING]
        return result
