"""The client-facing HTTP/1.1 server: an asyncio Protocol around httptools' parser.

    bytes ─► httptools ─► Request ─► queue (pipelined) ─► app.handle(request)
                                                            │ writes through
    bytes ◄── respond() / start_stream() + send_chunk() ◄───┘ the connection

One request per connection is handled at a time; pipelined requests wait in a
short queue (reading pauses when it is full), so answers leave in order. Bodies
may come with Content-Length or chunked; both are bounded by `max_body_bytes`
(413) and heads by `max_header_bytes` (431). `Expect: 100-continue` is answered.

Streams go out chunked. When the client reads slower than the backend writes,
the transport's buffer passes its high-water mark, `pause_writing` fires and the
connection tells whoever feeds it (`on_pause`/`on_resume`), which pauses reading
from the backend: memory stays bounded by the buffers, not by the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any, Protocol, cast

import httptools

__all__ = ["App", "HttpConnection", "Request", "status_line"]

_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")
    return line


# Pipelined requests parsed ahead of the one being answered; reading pauses beyond.
_MAX_PIPELINE = 16


class Request:
    """One parsed request. Header names are lower-cased bytes, values raw bytes."""

    __slots__ = (
        "body",
        "conn",
        "headers",
        "keep_alive",
        "method",
        "path",
        "received",
    )

    def __init__(self, conn: HttpConnection, method: bytes, path: bytes) -> None:
        self.conn = conn
        self.method = method
        self.path = path
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.keep_alive = True
        self.received = 0.0

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class App(Protocol):
    """What the connection calls: one request at a time, in order."""

    def handle(self, request: Request) -> Any:
        """Answer `request` through `request.conn`; may return a coroutine to run."""

    def error_body(self, status: int, message: str) -> bytes:
        """An OpenAI-style error body for protocol-level errors (400, 413, 431)."""


class HttpConnection(asyncio.Protocol):
    """A client connection: parse, queue, hand to the app, write answers in order."""

    def __init__(
        self,
        app: App,
        loop: asyncio.AbstractEventLoop,
        connections: set[HttpConnection],
        *,
        max_body_bytes: int,
        max_header_bytes: int,
    ) -> None:
        self.app = app
        self.loop = loop
        self.connections = connections
        self.max_body = max_body_bytes
        self.max_head = max_header_bytes
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self.busy = False
        self.queue: deque[Request] = deque()
        self.last_active = time.monotonic()
        self._cur: Request | None = None
        self._url = b""
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_len = 0
        self._reading_paused = False
        self._dead = False  # stop parsing: an error answer is on its way, then close
        # Flow control of a stream being written (set by the stream's feeder).
        self.write_paused = False
        self.on_pause: Callable[[], None] | None = None
        self.on_resume: Callable[[], None] | None = None
        # Called once if the client goes away while a request is being answered.
        self.on_lost: Callable[[], None] | None = None
        self.streaming = False
        # Set by the server when the connection limit is reached: answer 503, close.
        self.over_limit = False
        # The client half-closed: close once the queued requests are answered.
        self._eof = False

    # ---- asyncio.Protocol --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        if self.over_limit:
            body = self.app.error_body(503, "too many connections")
            transport.write(
                status_line(503) + b"content-type: application/json\r\nconnection: close\r\n"
                b"content-length: %d\r\n\r\n%b" % (len(body), body)
            )
            transport.close()
            self.closed = True
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=256 * 1024)
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.connections.discard(self)
        self.queue.clear()
        cb = self.on_lost
        self.on_lost = None
        if cb is not None:
            cb()
        if self.on_resume is not None:
            # Unblock a feeder waiting for the client to drain.
            resume, self.on_resume = self.on_resume, None
            resume()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.on_pause is not None:
            self.on_pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.on_resume is not None:
            self.on_resume()

    def data_received(self, data: bytes) -> None:
        if self._dead:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            if not self._dead:
                self._fail(400, f"malformed HTTP request: {exc}")

    def eof_received(self) -> bool | None:
        # Half-close: finish answering what was asked, then close (see `_done`).
        self._eof = True
        if not self.busy and not self.queue and self.transport is not None:
            self.transport.close()
        return True

    # ---- httptools callbacks -------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._head_bytes = 0
        self._body = []
        self._body_len = 0
        self._cur = Request(self, b"", b"")

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.max_head:
            self._fail(431, "request headers are too large")
            raise httptools.HttpParserError("headers too large")
        if self._cur is not None:
            self._cur.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        req = self._cur
        if req is None:
            req = self._cur = Request(self, b"", b"")
        req.method = self.parser.get_method()
        req.path = self._url
        req.keep_alive = self.parser.should_keep_alive()
        cl = req.header(b"content-length")
        if cl is not None and cl.isdigit() and int(cl) > self.max_body:
            self._fail(413, f"request body exceeds the limit of {self.max_body} bytes")
            raise httptools.HttpParserError("body too large")
        expect = req.header(b"expect")
        if expect is not None and expect.lower() == b"100-continue" and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > self.max_body:
            self._fail(413, f"request body exceeds the limit of {self.max_body} bytes")
            raise httptools.HttpParserError("body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        req = self._cur
        self._cur = None
        if req is None:  # pragma: no cover - httptools always calls headers_complete
            return
        body = self._body
        req.body = body[0] if len(body) == 1 else b"".join(body)
        self._body = []
        req.received = self.last_active = time.monotonic()
        if self.busy:
            self.queue.append(req)
            if len(self.queue) >= _MAX_PIPELINE and self.transport and not self._reading_paused:
                self._reading_paused = True
                self.transport.pause_reading()
        else:
            self._dispatch(req)

    # ---- dispatch --------------------------------------------------------------------
    def _dispatch(self, req: Request) -> None:
        self.busy = True
        if req.method == b"!ERROR":
            self.respond(int(req.path), (), req.body, close=True)
            return
        try:
            result = self.app.handle(req)
        except Exception:  # pragma: no cover - the app answers its own errors
            self.respond(500, (), self.app.error_body(500, "internal error"), close=True)
            return
        if result is not None:
            task = self.loop.create_task(result)
            task.add_done_callback(_retrieve)

    def _done(self) -> None:
        """The current answer is complete: next pipelined request, or idle."""
        self.busy = False
        self.streaming = False
        self.on_lost = self.on_pause = self.on_resume = None
        self.last_active = time.monotonic()
        if self.closed:
            return
        if self.queue:
            nxt = self.queue.popleft()
            if self._reading_paused and len(self.queue) < _MAX_PIPELINE // 2 and self.transport:
                self._reading_paused = False
                self.transport.resume_reading()
            self._dispatch(nxt)
        elif self._eof and self.transport is not None:
            self.transport.close()
            self.closed = True
            self.connections.discard(self)

    def _fail(self, status: int, message: str) -> None:
        """A protocol-level error: answer it (after what is queued) and close."""
        self._dead = True
        self._cur = None
        body = self.app.error_body(status, message)
        if self.busy:
            # Answer in order: after the current one; drop what was queued after it.
            self.queue.clear()
            err = Request(self, b"", b"")
            err.keep_alive = False
            err.body = body
            err.method = b"!ERROR"
            err.path = str(status).encode()
            self.queue.append(err)
        else:
            self.respond(status, (), body, close=True)

    # ---- writing answers ---------------------------------------------------------------
    def respond(
        self,
        status: int,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        *,
        close: bool = False,
        keep_alive: bool = True,
    ) -> None:
        """Write a whole answer (Content-Length framing) and finish the request."""
        t = self.transport
        if t is None or self.closed:
            self._done()
            return
        close = close or not keep_alive or self._dead
        parts = [status_line(status)]
        for k, v in headers:
            parts += (k, b": ", v, b"\r\n")
        parts.append(b"content-length: %d\r\n" % len(body))
        if close:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", body)
        t.write(b"".join(parts))
        if close:
            t.close()
            self.closed = True
            self.connections.discard(self)
        self._done()

    def start_stream(self, status: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        """Write the head of a chunked answer; then `send_chunk`, then `end_stream`."""
        t = self.transport
        if t is None or self.closed:
            return
        self.streaming = True
        parts = [status_line(status)]
        for k, v in headers:
            parts += (k, b": ", v, b"\r\n")
        parts.append(b"transfer-encoding: chunked\r\n\r\n")
        t.write(b"".join(parts))

    def send_chunk(self, data: bytes) -> None:
        t = self.transport
        if data and t is not None and not self.closed:
            t.write(b"%x\r\n%b\r\n" % (len(data), data))

    def end_stream(self, keep_alive: bool = True) -> None:
        t = self.transport
        if t is not None and not self.closed:
            t.write(b"0\r\n\r\n")
            if not keep_alive or self._dead:
                t.close()
                self.closed = True
                self.connections.discard(self)
        self._done()

    def abort(self) -> None:
        """Drop the connection without an answer (a stream that cannot end cleanly)."""
        if self.transport is not None:
            self.transport.abort()
        self.closed = True
        self.connections.discard(self)
        self._done()

    def close_if_idle(self) -> bool:
        if not self.busy and not self.queue and self.transport is not None:
            self.transport.close()
            self.closed = True
            self.connections.discard(self)
            return True
        return False


def _retrieve(task: asyncio.Task[Any]) -> None:
    # Handlers answer their own errors; this only keeps asyncio from warning about
    # an exception that escaped one (it is logged by the handler's own guard).
    if not task.cancelled():
        task.exception()
