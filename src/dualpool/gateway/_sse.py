"""Relay of a vLLM server-sent-event stream that reads its usage on the way.

The gateway asks every streamed answer for usage (`stream_options.include_usage`)
so the calibrator learns from streams too. vLLM then sends one extra event before
`data: [DONE]`: a chunk with `"choices": []` and the usage. When the client had
not asked for it, the relay removes exactly that event, so the client receives
what vLLM would have sent it; when the client asked, it passes untouched.

    upstream bytes ─► complete events (split on a blank line) ─► forwarded at once
                      └─ a partial event waits for its end (bounded: `MAX_PENDING`)

Only pieces that contain `"usage"` are parsed; everything else is forwarded as
the bytes that came in.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_PENDING", "SseRelay", "ask_for_usage", "usage_from_body"]

# A partial event longer than this is forwarded as is (it cannot be the usage chunk,
# which is small), so a stream without blank lines cannot grow the buffer.
MAX_PENDING = 1 << 20


class SseRelay:
    """Feed upstream bytes, forward what `feed` returns; `usage` holds the last usage."""

    __slots__ = ("_buf", "_sep", "strip_usage", "usage")

    def __init__(self, strip_usage: bool) -> None:
        # True when the gateway injected include_usage: drop the usage-only event.
        self.strip_usage = strip_usage
        self.usage: dict[str, Any] | None = None
        self._buf = b""
        self._sep = b"\n\n"

    def feed(self, data: bytes) -> bytes:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        sep = self._sep
        cut = data.rfind(sep)
        if cut < 0 and sep == b"\n\n" and b"\r\n\r\n" in data:
            sep = self._sep = b"\r\n\r\n"
            cut = data.rfind(sep)
        if cut < 0:
            if len(data) > MAX_PENDING:
                return data
            self._buf = data
            return b""
        cut += len(sep)
        if cut < len(data):
            self._buf = data[cut:]
            data = data[:cut]
        if b'"usage"' not in data:
            return data
        return self._filter(data, sep)

    def flush(self) -> bytes:
        """What is left at the end of the stream (a last event without a blank line)."""
        rest, self._buf = self._buf, b""
        if rest and b'"usage"' in rest:
            return self._filter(rest, self._sep)
        return rest

    def _filter(self, data: bytes, sep: bytes) -> bytes:
        events = data.split(sep)
        kept: list[bytes] = []
        for ev in events[:-1] if data.endswith(sep) else events:
            if b'"usage"' in ev and self._read_usage(ev) and self.strip_usage:
                continue
            kept.append(ev)
        if not kept:
            return b""
        out = sep.join(kept)
        return out + sep if data.endswith(sep) else out

    def _read_usage(self, event: bytes) -> bool:
        """Record the usage of an event; True when it is the usage-only chunk."""
        payload = b"".join(
            line[5:].lstrip() for line in event.splitlines() if line.startswith(b"data:")
        )
        try:
            obj = json.loads(payload)
        except ValueError:
            return False
        if not isinstance(obj, dict):
            return False
        usage = obj.get("usage")
        if not isinstance(usage, dict):
            return False
        self.usage = usage
        return obj.get("choices") == []


def usage_from_body(body: bytes) -> dict[str, Any] | None:
    """The `usage` object of a non-streamed answer, read from its tail only.

    vLLM writes usage last; parsing from the last `"usage"` key costs a few
    hundred bytes instead of the whole answer. Falls back to a full parse.
    """
    i = body.rfind(b'"usage"')
    if i < 0:
        return None
    tail = body[i + 7 :].decode("utf-8", "replace").lstrip()
    if tail.startswith(":"):
        try:
            value, _ = _DECODER.raw_decode(tail[1:].lstrip())
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    usage = obj.get("usage") if isinstance(obj, dict) else None
    return usage if isinstance(usage, dict) else None


_DECODER = json.JSONDecoder()


def ask_for_usage(body: dict[str, Any]) -> bool:
    """Set `stream_options.include_usage` on a streamed request that did not ask for it.

    Returns True when it was added (the body was changed): the relay then strips
    the usage chunk (`SseRelay(strip_usage=True)`), so the client receives what
    vLLM would have sent it. Non-streamed requests and clients that asked for
    usage are left alone (False).
    """
    if body.get("stream") is not True:
        return False
    so = body.get("stream_options")
    if type(so) is dict and so.get("include_usage") is True:
        return False
    body["stream_options"] = (
        {**so, "include_usage": True} if type(so) is dict else {"include_usage": True}
    )
    return True
