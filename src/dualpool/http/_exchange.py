"""One request and its answer: `Request` (parsed), `Exchange` (written), `Handler`.

An `Exchange` frames what the handler gives it as RFC 9112 asks for the request it
answers: Content-Length for a whole answer; chunked for a stream, or close-delimited
for an HTTP/1.0 client; no body for HEAD, 1xx, 204 and 304; `Date` always; and
`connection: close` / `keep-alive` as the connection will behave.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from dualpool.http._wire import DATE, status_line

if TYPE_CHECKING:
    from dualpool.http._server import HttpConnection

__all__ = ["Exchange", "Handler", "Request"]

_NO_BODY_STATUS = frozenset({204, 304})


class Request:
    """One parsed request. Header names are lower-cased bytes, values raw bytes."""

    __slots__ = (
        "body",
        "error",
        "headers",
        "keep_alive",
        "method",
        "path",
        "query",
        "received",
        "target",
        "version",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.path = b""
        self.query = b""
        self.version = "1.1"  # as httptools gives it: "1.0", "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.keep_alive = True
        self.received = 0.0
        # (status, message) of a protocol error answered in this request's place.
        self.error: tuple[int, str] | None = None

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (`name` lower-case), or None."""
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def text_headers(self) -> dict[str, str]:
        """Headers as a str mapping (the last value wins)."""
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers}


class Handler(Protocol):
    """What the connection calls: once per request, in order."""

    def handle(self, request: Request, exchange: Exchange) -> Awaitable[None] | None:
        """Answer through `exchange` now, or later (return a coroutine to run as a task)."""

    def error_body(self, status: int, message: str) -> bytes:
        """A JSON error body for protocol-level errors (400, 408, 413, 414, 431, 5xx)."""


class Exchange:
    """The answer to one request: `send` (whole), or `start_stream` + `write` + `end`."""

    __slots__ = (
        "_chunked",
        "_conn",
        "_no_body",
        "done",
        "http10",
        "keep_alive",
        "on_disconnect",
        "on_pause",
        "on_resume",
        "request",
        "streaming",
    )

    def __init__(self, conn: HttpConnection, request: Request) -> None:
        self._conn = conn
        self.request = request
        self.http10 = request.version == "1.0"
        self.keep_alive = request.keep_alive and not conn.closing
        self._no_body = request.method == b"HEAD"
        self._chunked = False
        self.streaming = False
        self.done = False
        # Called once if the client goes away before the answer is complete.
        self.on_disconnect: Callable[[], None] | None = None
        # Write-side flow control of a stream (see the module docstring).
        self.on_pause: Callable[[], None] | None = None
        self.on_resume: Callable[[], None] | None = None

    @property
    def connected(self) -> bool:
        return not self._conn.closed

    @property
    def write_paused(self) -> bool:
        return self._conn.write_paused

    def _head(
        self,
        status: int,
        headers: Sequence[tuple[bytes, bytes]],
        content_type: bytes | None,
        framing: bytes,
    ) -> bytes:
        parts = [status_line(status), DATE.line, self._conn.server_header]
        if content_type is not None:
            parts += (b"content-type: ", content_type, b"\r\n")
        for k, v in headers:
            parts += (k, b": ", v, b"\r\n")
        parts.append(framing)
        if not self.keep_alive:
            parts.append(b"connection: close\r\n\r\n")
        elif self.http10:
            parts.append(b"connection: keep-alive\r\n\r\n")
        else:
            parts.append(b"\r\n")
        return b"".join(parts)

    def send(
        self,
        status: int,
        body: bytes,
        headers: Sequence[tuple[bytes, bytes]] = (),
        content_type: bytes | None = b"application/json",
    ) -> None:
        """The whole answer at once (Content-Length framing); finishes the exchange."""
        if self.done:
            return
        self.done = True
        conn = self._conn
        t = conn.transport
        if t is not None and not conn.closed:
            # One join for head and body (the request path's hottest write).
            parts = [status_line(status), DATE.line, conn.server_header]
            if content_type is not None:
                parts += (b"content-type: ", content_type, b"\r\n")
            for k, v in headers:
                parts += (k, b": ", v, b"\r\n")
            if status >= 200 and status not in _NO_BODY_STATUS:
                parts.append(b"content-length: %d\r\n" % len(body))
            if not self.keep_alive:
                parts.append(b"connection: close\r\n\r\n")
            elif self.http10:
                parts.append(b"connection: keep-alive\r\n\r\n")
            else:
                parts.append(b"\r\n")
            if body and not self._no_body and status >= 200 and status not in _NO_BODY_STATUS:
                parts.append(body)
            t.write(b"".join(parts))
        conn.exchange_done(self)

    def start_stream(
        self,
        status: int = 200,
        content_type: bytes | None = b"text/event-stream",
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        """The head of a streamed answer: chunked, or close-delimited for HTTP/1.0."""
        self.streaming = True
        if self.http10:
            self.keep_alive = False
            framing = b""
        else:
            self._chunked = True
            framing = b"transfer-encoding: chunked\r\n"
        t = self._conn.transport
        if t is not None and not self._conn.closed:
            t.write(self._head(status, headers, content_type, framing))

    def write(self, data: bytes) -> None:
        """One piece of a streamed body (ignored once the client is gone, or for HEAD)."""
        t = self._conn.transport
        if data and t is not None and not self._no_body and not self._conn.closed:
            t.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)

    def end(self, data: bytes = b"") -> None:
        """The last piece (optional) and the end of the stream; finishes the exchange."""
        if self.done:
            return
        self.done = True
        t = self._conn.transport
        if t is not None and not self._conn.closed and not self._no_body:
            if self._chunked:
                if data:
                    t.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data))
                else:
                    t.write(b"0\r\n\r\n")
            elif data:
                t.write(data)
        self._conn.exchange_done(self)

    def abort(self) -> None:
        """Drop the connection without finishing the answer (a stream that cannot end)."""
        if self.done:
            return
        self.done = True
        self.keep_alive = False
        self._conn.abort()
        self._conn.exchange_done(self)
