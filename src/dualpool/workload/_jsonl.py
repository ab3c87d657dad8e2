"""JSONL files of OpenAI request bodies, for replaying real requests.

One JSON object per line, in either of two shapes:

    {"model": "m", "messages": [...], "max_tokens": 256}            a bare body
    {"timestamp": 12.5, "body": {...}, "prompt_tokens": 812,         a record
     "output_tokens": 143, "category": "code"}

Record fields (all but "body" optional):

- `timestamp`: seconds (number) or an ISO date-time string; arrival_s is
  measured from the first line's timestamp; lines must be in time order.
- `prompt_tokens`, `output_tokens`: the true counts. A record may carry an
  OpenAI `usage` object instead (`prompt_tokens`, `completion_tokens`).
- `category`: content class.

A body must be an object with `messages` (chat) or `prompt` (completions).
`max_tokens` is the body's `max_completion_tokens`, else `max_tokens`, else None.
`prompt_bytes` is the UTF-8 size of the prompt text: message contents (string
contents, and the `text` of text parts), or the `prompt` string(s).
`num_messages` is len(messages) (1 for completions).

Missing true counts are UNKNOWN_TOKENS (-1): fill them before simulating,
e.g. `r.prompt_tokens = tokenizer.count(r.body)` or via `fill_tokens()`.

Arrivals: with `rate` given, arrivals are synthetic (Poisson/gamma, seeded)
and timestamps are ignored; without it every line needs a `timestamp`.
Bare bodies therefore need `rate`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from dualpool.errors import WorkloadError
from dualpool.workload._arrivals import ArrivalProcess, check_seed
from dualpool.workload._azure import TimestampParser
from dualpool.workload._base import Workload
from dualpool.workload._files import open_text
from dualpool.workload._request import UNKNOWN_TOKENS, Request

__all__ = ["JsonlWorkload", "fill_tokens", "prompt_bytes"]

_STREAM = 2  # block_rng stream id of JSONL arrivals


def prompt_bytes(body: dict[str, Any]) -> int:
    """UTF-8 bytes of the prompt text of an OpenAI body (see module doc)."""
    total = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            if not isinstance(m, dict):
                continue
            c = m.get("content")
            if isinstance(c, str):
                total += len(c.encode("utf-8"))
            elif isinstance(c, list):
                for part in c:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        total += len(part["text"].encode("utf-8"))
        return total
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return len(prompt.encode("utf-8"))
    if isinstance(prompt, list):
        return sum(len(p.encode("utf-8")) for p in prompt if isinstance(p, str))
    return 0


class JsonlWorkload(Workload):
    """Requests replayed from a JSONL file of OpenAI bodies (see module doc).

    Args:
        path: the JSONL file.
        rate, cv, seed: synthetic arrivals; when rate is None, the file's
            timestamps are used.
        category: default content class for lines without one.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        rate: float | None = None,
        cv: float = 1.0,
        seed: int = 0,
        category: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.arrivals = None if rate is None else ArrivalProcess(rate=rate, cv=cv)
        self.seed = check_seed(seed)
        self.category = category

    def describe(self) -> str:
        how = "timestamps" if self.arrivals is None else self.arrivals.describe()
        return f"jsonl {self.path.name}, {how}"

    def rate_hint(self) -> float | None:
        return None if self.arrivals is None else self.arrivals.rate

    def _synthetic_times(self) -> Iterator[float]:
        assert self.arrivals is not None
        for block in self.arrivals.blocks(self.seed, _STREAM):
            yield from block.tolist()

    def __iter__(self) -> Iterator[Request]:
        path = self.path
        times = None if self.arrivals is None else self._synthetic_times()
        parse_ts = TimestampParser()
        first: float | None = None
        prev = 0.0
        with open_text(path) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise WorkloadError(f"{path}:{lineno}: not JSON ({e.msg})") from None
                rec = self._record(obj, lineno)
                if times is not None:
                    arrival = next(times)
                else:
                    ts = obj.get("timestamp") if "body" in obj else None
                    if ts is None:
                        raise WorkloadError(
                            f"{path}:{lineno}: no 'timestamp'; wrap the body as "
                            '{"timestamp": seconds, "body": {...}} or pass rate=...'
                        )
                    t = _timestamp(ts, parse_ts, path, lineno)
                    if first is None:
                        first = t
                    arrival = t - first
                    if arrival < prev:
                        raise WorkloadError(
                            f"{path}:{lineno}: timestamp {ts!r} is earlier than the line "
                            "before; lines must be in time order"
                        )
                    prev = arrival
                rec.arrival_s = arrival
                yield rec

    def _record(self, obj: object, lineno: int) -> Request:
        path = self.path
        if not isinstance(obj, dict):
            raise WorkloadError(f"{path}:{lineno}: expected a JSON object, got {obj!r:.60}")
        if "body" in obj:
            body = obj["body"]
            meta: dict[str, Any] = obj
        else:
            body, meta = obj, {}
        if not isinstance(body, dict) or not (
            isinstance(body.get("messages"), list) or "prompt" in body
        ):
            raise WorkloadError(
                f"{path}:{lineno}: the body must be an object with 'messages' (a list) or 'prompt'"
            )
        usage = meta.get("usage") if isinstance(meta.get("usage"), dict) else {}
        assert isinstance(usage, dict)
        pt = _opt_count(
            meta.get("prompt_tokens", usage.get("prompt_tokens")), path, lineno, "prompt_tokens"
        )
        ot = _opt_count(
            meta.get("output_tokens", usage.get("completion_tokens")), path, lineno, "output_tokens"
        )
        mx = body.get("max_completion_tokens")
        if mx is None:
            mx = body.get("max_tokens")
        max_tokens = _opt_count(mx, path, lineno, "max_tokens")
        category = meta.get("category", self.category)
        if category is not None and not isinstance(category, str):
            raise WorkloadError(f"{path}:{lineno}: category must be a string, got {category!r}")
        messages = body.get("messages")
        return Request(
            0.0,
            UNKNOWN_TOKENS if pt is None else pt,
            UNKNOWN_TOKENS if ot is None else ot,
            max_tokens,
            prompt_bytes(body),
            category,
            len(messages) if isinstance(messages, list) else 1,
            body,
        )


def _opt_count(v: object, path: Path, lineno: int, name: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise WorkloadError(f"{path}:{lineno}: {name} must be a non-negative integer, got {v!r}")
    return v


def _timestamp(ts: object, parse: TimestampParser, path: Path, lineno: int) -> float:
    if isinstance(ts, (int, float)) and not isinstance(ts, bool):
        t = float(ts)
        if math.isfinite(t):
            return t
    elif isinstance(ts, str):
        try:
            return parse(ts)
        except ValueError as e:
            raise WorkloadError(f"{path}:{lineno}: {e}") from None
    raise WorkloadError(f"{path}:{lineno}: timestamp must be seconds or an ISO string, got {ts!r}")


def fill_tokens(
    requests: Iterable[Request],
    count: Callable[[Request], tuple[int, int]],
) -> Iterator[Request]:
    """Fill UNKNOWN_TOKENS fields with `count(request) -> (prompt, output)`.

    `count` is called only for requests with an unknown count; known counts
    are kept.
    """
    for r in requests:
        if r.prompt_tokens < 0 or r.output_tokens < 0:
            p, o = count(r)
            r = r.at(r.arrival_s)
            if r.prompt_tokens < 0:
                r.prompt_tokens = p
            if r.output_tokens < 0:
                r.output_tokens = o
        yield r
