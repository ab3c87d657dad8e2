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
from dataclasses import dataclass

from dualpool.contract import over_length_message

__all__ = [
    "FINISH_REASONS",
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


@dataclass(slots=True, eq=False)
class Request:
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
