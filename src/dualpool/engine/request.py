"""A request inside one engine, and the over-length rejection message.

Token layout of a request (vLLM v1 semantics)::

    |<------- prompt_tokens ------->|<--- num_output_tokens --->|
    [p0 p1 ...................  pP-1][o0 o1 ..............  om-1]
    |<------------ num_computed_tokens ------------>|
                                      the last sampled token is not yet
                                      in the KV cache: a decode step
                                      computes it and samples the next.

`num_tokens = prompt_tokens + num_output_tokens`; a step schedules up to
`num_tokens - num_computed_tokens` tokens. When a scheduled chunk brings
`num_computed_tokens` up to `num_tokens`, a new token is sampled. A
preempted request drops its KV (num_computed_tokens = 0) and recomputes
prompt + generated tokens as one prefill when re-admitted.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from heapq import heappop, heappush

from dualpool.contract import over_length_message

__all__ = [
    "FINISH_REASONS",
    "DecodeGroup",
    "Request",
    "RequestStatus",
    "over_length_message",
]


class RequestStatus(enum.IntEnum):
    """Lifecycle of a request. Every status above PREEMPTED is final."""

    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2  # back in the waiting queue, KV freed, will recompute
    FINISHED_STOPPED = 3  # produced its output target before max_tokens (EOS)
    FINISHED_LENGTH_CAPPED = 4  # produced max_tokens tokens
    FINISHED_ABORTED = 5  # the client went away
    FINISHED_REJECTED = 6  # refused at add time (prompt + max_tokens > max_model_len)

    @property
    def is_finished(self) -> bool:
        return self > RequestStatus.PREEMPTED


# OpenAI finish_reason of each final status (None: no choice is returned).
FINISH_REASONS: dict[RequestStatus, str | None] = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH_CAPPED: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_REJECTED: None,
}


class DecodeGroup:
    """A scheduler's lazy decode group: every running request in steady decode state.

    A member's counters are stored as offsets from `d`, the number of group
    decode steps taken, so one step advances every member in O(1) by
    `d += 1`. The group keeps the aggregates a step or a decode run needs:
    `n` members, `ctx_sum` the sum of their computed-token offsets (the
    members' context is `context()`), `hist[r]` the members whose offset is
    r mod block_size (the ones needing a new KV block at a given step:
    `due(j)`), and the members by the group step at which they finish
    (`done`, with a lazy min-heap of those steps in `heap`). `pending` is 1
    between a schedule() that allocated the members' next slot and the
    update that applies it (their blocks then cover one more token).

    Named operations: `join` (a request that reached steady decode),
    `leave` (abort), `dissolve` (before a step the group cannot take),
    `pop_finishers` + `settle` (members reaching their output target), and
    `next_finish` (steps to the next completion).
    """

    __slots__ = ("block_size", "ctx_sum", "d", "done", "heap", "hist", "n", "pending")

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.d = 0
        self.pending = 0
        self.n = 0
        self.ctx_sum = 0
        self.hist = [0] * block_size
        self.done: dict[int, list[Request]] = {}
        self.heap: list[int] = []

    def context(self) -> int:
        """Total computed tokens of the members."""
        return self.ctx_sum + self.n * self.d

    def due(self, j: int) -> int:
        """Members that need a new block at group step d + j (for its token)."""
        return self.hist[-(self.d + j) % self.block_size]

    def join(self, req: Request) -> None:
        """Make a running request in decode state a member (if its blocks are as
        allocate_slots leaves them; otherwise it stays eager)."""
        bs = self.block_size
        c = req._computed
        if req._blocks != -(-c // bs):
            return
        d = self.d
        off = c - d
        req._computed = off
        req._generated -= d
        req._group = self
        self.n += 1
        self.ctx_sum += off
        self.hist[off % bs] += 1
        fin = req.output_tokens - req._generated  # the group step at which it finishes
        req._finish_step = fin
        lst = self.done.get(fin)
        if lst is None:
            self.done[fin] = [req]
            heappush(self.heap, fin)
        else:
            lst.append(req)

    def _unlink(self, req: Request) -> None:
        """Materialize one member's counters and drop it from the aggregates."""
        bs = self.block_size
        off = req._computed
        self.n -= 1
        self.ctx_sum -= off
        self.hist[off % bs] -= 1
        c = off + self.d
        req._computed = c
        req._generated += self.d
        req._blocks = -(-(c + self.pending) // bs)
        req._group = None
        req._finish_step = -1

    def leave(self, req: Request) -> None:
        """Take one member out (an abort): its counters become plain values again."""
        fin = req._finish_step
        lst = self.done[fin]
        if len(lst) == 1:
            del self.done[fin]
        else:
            lst.remove(req)
        self._unlink(req)

    def dissolve(self, running: Iterable[Request]) -> None:
        """Materialize every member (those of `running` in the group) and empty it."""
        if not self.n:
            return
        d = self.d
        p = self.pending
        bs = self.block_size
        for req in running:
            if req._group is self:
                c = req._computed + d
                req._computed = c
                req._generated += d
                req._blocks = -(-(c + p) // bs)
                req._group = None
                req._finish_step = -1
        self.n = 0
        self.ctx_sum = 0
        self.hist = [0] * bs
        self.done = {}
        self.heap = []

    def pop_finishers(self, key: int) -> list[Request] | None:
        """The members whose output target is reached at group step `key`, in
        admission order (the order step-by-step would finish them); they stay
        counted in `n` until `settle`."""
        lst = self.done.pop(key, None)
        if lst and len(lst) > 1:
            lst.sort(key=_admission_order)
        return lst

    def settle(self, req: Request) -> int:
        """Materialize a finishing member's counters; the blocks it held.

        (`_unlink` for the commonest exit, without the per-member count:
        the caller subtracts len(finishers) from `n` once.)"""
        bs = self.block_size
        off = req._computed
        self.ctx_sum -= off
        self.hist[off % bs] -= 1
        d = self.d
        req._computed = off + d
        req._generated += d
        req._group = None
        req._finish_step = -1
        return -(-(off + d + self.pending) // bs)

    def next_finish(self) -> int:
        """Group steps until the next member finishes (the group is not empty)."""
        heap = self.heap
        done = self.done
        while heap[0] not in done:
            heappop(heap)
        return heap[0] - self.d


def _admission_order(req: Request) -> int:
    return req._admission


class Request:
    """One request's explicit state; mutated only by the Scheduler.

    `num_computed_tokens`, `num_output_tokens` and `num_blocks` read through
    the scheduler's decode group while the request is a member (the raw
    slots `_computed`, `_generated` then hold offsets from the group's step counter), so
    they are always current whoever reads them.
    """

    __slots__ = (
        "_admission",
        "_blocks",
        "_computed",
        "_cseg",
        "_finish_step",
        "_generated",
        "_group",
        "arrival_time",
        "error",
        "finish_time",
        "first_token_time",
        "max_tokens",
        "num_preemptions",
        "output_tokens",
        "prompt_tokens",
        "request_id",
        "status",
    )

    def __init__(
        self,
        request_id: str,
        prompt_tokens: int,
        max_tokens: int,
        output_tokens: int,
        arrival_time: float,
        num_computed_tokens: int = 0,
        num_output_tokens: int = 0,
        status: RequestStatus = RequestStatus.WAITING,
        num_preemptions: int = 0,
        num_blocks: int = 0,
        first_token_time: float | None = None,
        finish_time: float | None = None,
        error: str | None = None,
    ) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        # The client's max_tokens (what the length check uses).
        self.max_tokens = max_tokens
        # Tokens this request will actually generate (<= max_tokens): the
        # workload's output length; generation stops there (EOS).
        self.output_tokens = output_tokens
        self.arrival_time = arrival_time
        self._computed = num_computed_tokens
        self._generated = num_output_tokens
        self.status = status
        self.num_preemptions = num_preemptions
        # KV blocks held (managed by KVCacheManager).
        self._blocks = num_blocks
        self.first_token_time = first_token_time
        self.finish_time = finish_time
        # The 400 message when status is FINISHED_REJECTED.
        self.error = error
        # Decode group membership (None: the raw counters are the values),
        # the group step at which it finishes, and its admission number.
        self._group: DecodeGroup | None = None
        self._finish_step = -1
        self._admission = 0
        # The free-queue segment of this request's cached prefix while it waits
        # after a preemption (KVCacheManager, prefix caching); None otherwise.
        self._cseg: list[object] | None = None

    def __repr__(self) -> str:
        return (
            f"Request(request_id={self.request_id!r}, prompt_tokens={self.prompt_tokens}, "
            f"max_tokens={self.max_tokens}, output_tokens={self.output_tokens}, "
            f"num_computed_tokens={self.num_computed_tokens}, "
            f"num_output_tokens={self.num_output_tokens}, status={self.status!r})"
        )

    @property
    def num_computed_tokens(self) -> int:
        g = self._group
        return self._computed if g is None else self._computed + g.d

    @num_computed_tokens.setter
    def num_computed_tokens(self, value: int) -> None:
        g = self._group
        self._computed = value if g is None else value - g.d

    @property
    def num_output_tokens(self) -> int:
        g = self._group
        return self._generated if g is None else self._generated + g.d

    @num_output_tokens.setter
    def num_output_tokens(self, value: int) -> None:
        g = self._group
        self._generated = value if g is None else value - g.d

    @property
    def num_blocks(self) -> int:
        g = self._group
        if g is None:
            return self._blocks
        return -(-(self._computed + g.d + g.pending) // g.block_size)

    @num_blocks.setter
    def num_blocks(self, value: int) -> None:
        if self._group is not None:
            raise RuntimeError("a decode group member's blocks follow its tokens")
        self._blocks = value

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
