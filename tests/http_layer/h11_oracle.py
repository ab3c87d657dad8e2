"""h11 (an independent HTTP/1.1 implementation) as the judge of what our server writes.

`read_answers(reader, methods)` parses the answers to requests already sent (raw, so
tests can pipeline or send malformed bytes) with a strict h11 client: any framing
error, an interleaved 1xx, a body on HEAD, a chunked answer to HTTP/1.0 fails there.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import h11


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes = b""
    informational: list[int] = field(default_factory=list)
    http_version: bytes = b"1.1"


async def read_answers(
    reader: asyncio.StreamReader,
    methods: list[bytes],
    *,
    http10: bool = False,
    timeout: float = 5.0,
) -> tuple[list[Answer], bool]:
    """The answers to `methods` in order, and whether the server then closed."""
    conn = h11.Connection(our_role=h11.CLIENT)
    answers: list[Answer] = []
    closed = False
    for method in methods:
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        # h11 sends only HTTP/1.1: an HTTP/1.0 request is modelled as 1.1 + close
        # (the callers check the framing themselves: no chunked coding to 1.0).
        headers = [(b"host", b"x")] + ([(b"connection", b"close")] if http10 else [])
        conn.send(h11.Request(method=method, target=b"/", headers=headers))
        conn.send(h11.EndOfMessage())
        ans: Answer | None = None
        infos: list[int] = []
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(65536), timeout)
                conn.receive_data(data)
                continue
            if isinstance(ev, h11.InformationalResponse):
                infos.append(ev.status_code)
            elif isinstance(ev, h11.Response):
                ans = Answer(ev.status_code, dict(ev.headers), informational=infos)
                ans.http_version = ev.http_version
            elif isinstance(ev, h11.Data):
                assert ans is not None
                ans.body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                assert ans is not None
                answers.append(ans)
                break
            elif isinstance(ev, h11.ConnectionClosed):
                raise AssertionError(f"closed before the answer to {method!r}")
        if conn.their_state is h11.MUST_CLOSE:
            break
    if conn.their_state is h11.MUST_CLOSE or conn.our_state is h11.MUST_CLOSE:
        try:
            rest = await asyncio.wait_for(reader.read(65536), timeout)
        except (ConnectionError, TimeoutError):
            rest = b""
        closed = rest == b""
    return answers, closed
