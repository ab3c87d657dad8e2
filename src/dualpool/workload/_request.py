"""The simulation request record and its columnar twin.

`Request` is what every workload source yields. Millions are created per run,
so it is a `__slots__` dataclass (~96 bytes plus its int/float objects, about
190 bytes per request in total: 1M requests ~ 190 MB). It is mutable only
because frozen dataclasses are 5x slower to construct; treat it as immutable:
transforms build new records instead of editing old ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["UNKNOWN_TOKENS", "Request", "RequestColumns"]

# NOTE: a JSONL request without a recorded `usage` has no true token counts.
# We mark that with -1 rather than None so the fields stay plain ints (cheap,
# and numpy-friendly); the caller fills them, e.g. with a tokenizer.
UNKNOWN_TOKENS = -1


@dataclass(slots=True)
class Request:
    """One request of a workload; sources yield them in arrival order."""

    # seconds since the start of the workload (the first request of a trace is 0.0)
    arrival_s: float
    # true prompt length in tokens; UNKNOWN_TOKENS (-1) when the source lacks it
    prompt_tokens: int
    # true number of generated tokens; UNKNOWN_TOKENS (-1) when the source lacks it
    output_tokens: int
    # the declared output limit (max_completion_tokens, else max_tokens); None if absent
    max_tokens: int | None = None
    # UTF-8 bytes of the prompt text when known (the router's |r|)
    prompt_bytes: int | None = None
    # content class ("prose", "code", "cjk", ...) when known
    category: str | None = None
    # number of chat messages in the prompt
    num_messages: int = 1
    # the OpenAI request body, only for JSONL sources
    body: dict[str, Any] | None = None

    @property
    def total_tokens(self) -> int:
        """prompt + output tokens (meaningless when either is unknown)."""
        return self.prompt_tokens + self.output_tokens

    @property
    def tokens_known(self) -> bool:
        """True when both true token counts are present."""
        return self.prompt_tokens >= 0 and self.output_tokens >= 0

    def at(self, arrival_s: float) -> Request:
        """A copy arriving at `arrival_s` (faster than dataclasses.replace)."""
        return Request(
            arrival_s,
            self.prompt_tokens,
            self.output_tokens,
            self.max_tokens,
            self.prompt_bytes,
            self.category,
            self.num_messages,
            self.body,
        )


def requests_of(
    arrival_s: list[float],
    prompt_tokens: list[int],
    output_tokens: list[int],
    category: list[str | None],
) -> list[Request]:
    """Requests from aligned columns (no max_tokens, bytes or body): how the
    synthetic generators build a block. A function of its own so that `make
    compile` builds the loop natively."""
    return [
        Request(a, p, o, None, None, c)
        for a, p, o, c in zip(arrival_s, prompt_tokens, output_tokens, category, strict=True)
    ]


_NONE = -1  # how None is stored in the int columns of RequestColumns


@dataclass(slots=True)
class RequestColumns:
    """A small workload as numpy columns (bodies are dropped).

    Optional int fields store None as -1; `category` holds an index into
    `categories` (-1 for None). Use it for files that fit in memory, e.g. to
    compute statistics or replay a trace many times without re-parsing it.
    """

    arrival_s: npt.NDArray[np.float64]
    prompt_tokens: npt.NDArray[np.int64]
    output_tokens: npt.NDArray[np.int64]
    max_tokens: npt.NDArray[np.int64]
    prompt_bytes: npt.NDArray[np.int64]
    category: npt.NDArray[np.int16]
    num_messages: npt.NDArray[np.int32]
    categories: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    @classmethod
    def from_requests(cls, requests: Iterable[Request]) -> RequestColumns:
        """Collect a finite request stream into columns."""
        cats: dict[str, int] = {}
        arr: list[float] = []
        pt: list[int] = []
        ot: list[int] = []
        mt: list[int] = []
        pb: list[int] = []
        cat: list[int] = []
        nm: list[int] = []
        for r in requests:
            arr.append(r.arrival_s)
            pt.append(r.prompt_tokens)
            ot.append(r.output_tokens)
            mt.append(_NONE if r.max_tokens is None else r.max_tokens)
            pb.append(_NONE if r.prompt_bytes is None else r.prompt_bytes)
            if r.category is None:
                cat.append(-1)
            else:
                cat.append(cats.setdefault(r.category, len(cats)))
            nm.append(r.num_messages)
        return cls(
            arrival_s=np.asarray(arr, dtype=np.float64),
            prompt_tokens=np.asarray(pt, dtype=np.int64),
            output_tokens=np.asarray(ot, dtype=np.int64),
            max_tokens=np.asarray(mt, dtype=np.int64),
            prompt_bytes=np.asarray(pb, dtype=np.int64),
            category=np.asarray(cat, dtype=np.int16),
            num_messages=np.asarray(nm, dtype=np.int32),
            categories=tuple(cats),
        )

    def __iter__(self) -> Iterator[Request]:
        """Rebuild the Request records (bodies are not kept)."""
        cats = self.categories
        for a, p, o, m, b, c, n in zip(
            self.arrival_s.tolist(),
            self.prompt_tokens.tolist(),
            self.output_tokens.tolist(),
            self.max_tokens.tolist(),
            self.prompt_bytes.tolist(),
            self.category.tolist(),
            self.num_messages.tolist(),
            strict=True,
        ):
            yield Request(
                a,
                p,
                o,
                None if m == _NONE else m,
                None if b == _NONE else b,
                None if c < 0 else cats[c],
                n,
            )
