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
    """The clock of a scheduler's lazy decode group (see scheduler.py).

    Every running request in steady decode state is a member: its counters
    are stored as offsets from `d`, the number of group decode steps taken,
    so one step advances every member in O(1) by `d += 1`. `pending` is 1
    between a schedule() that allocated the members' next slot and the
    update that applies it (their blocks already cover one more token).
    """

    __slots__ = ("block_size", "d", "pending")

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.d = 0
        self.pending = 0


class Request:
    """One request's explicit state; mutated only by the Scheduler.

    `num_computed_tokens`, `num_output_tokens` and `num_blocks` read through
    the scheduler's decode group while the request is a member (the raw
    slots `_c`, `_o` then hold offsets from the group's step counter), so
    they are always current whoever reads them.
    """

    __slots__ = (
        "_adm",
        "_b",
        "_c",
        "_cseg",
        "_fin",
        "_grp",
        "_o",
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
        self._c = num_computed_tokens
        self._o = num_output_tokens
        self.status = status
        self.num_preemptions = num_preemptions
        # KV blocks held (managed by KVCacheManager).
        self._b = num_blocks
        self.first_token_time = first_token_time
        self.finish_time = finish_time
        # The 400 message when status is FINISHED_REJECTED.
        self.error = error
        # Decode group membership (None: the raw counters are the values),
        # the group step at which it finishes, and its admission number.
        self._grp: DecodeGroup | None = None
        self._fin = -1
        self._adm = 0
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
        g = self._grp
        return self._c if g is None else self._c + g.d

    @num_computed_tokens.setter
    def num_computed_tokens(self, value: int) -> None:
        g = self._grp
        self._c = value if g is None else value - g.d

    @property
    def num_output_tokens(self) -> int:
        g = self._grp
        return self._o if g is None else self._o + g.d

    @num_output_tokens.setter
    def num_output_tokens(self, value: int) -> None:
        g = self._grp
        self._o = value if g is None else value - g.d

    @property
    def num_blocks(self) -> int:
        g = self._grp
        if g is None:
            return self._b
        return -(-(self._c + g.d + g.pending) // g.block_size)

    @num_blocks.setter
    def num_blocks(self, value: int) -> None:
        if self._grp is not None:
            raise RuntimeError("a decode group member's blocks follow its tokens")
        self._b = value

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
