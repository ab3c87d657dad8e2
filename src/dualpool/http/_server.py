"""The server side of one client connection: httptools' parser in an asyncio Protocol.

    bytes ─► httptools ─► Request ─► queue (pipelined) ─► handler.handle(request, exchange)
                                                            │ answers through
    bytes ◄── Exchange.send() / start_stream() + write() + end() ┘

One request per connection is answered at a time; pipelined requests wait in a
short queue (reading pauses when it is full), so answers leave in order, and so
does an error found while parsing a later request (it is answered after the
ones before it, then the connection closes). Bodies come with Content-Length or
chunked (trailers are read and dropped), within `ServerLimits`.

What RFC 9110/9112 ask of a server and where it happens here:
- HEAD: the head a GET would get, no body (`Exchange` drops body bytes).
- HTTP/1.0 clients: no chunked coding; a stream is close-delimited; keep-alive
  only when asked for, and then said so.
- `Expect: 100-continue` (HTTP/1.1 only): `100 Continue` when the request is the
  one being read and nothing is being answered (never inside another answer);
  a body over the limit gets 413 instead; other expectations 417.
- `Upgrade`: ignored (RFC 9110 7.8 allows it): the request is answered as
  HTTP/1.1 and the connection stays HTTP/1.1. With a body it is refused (400).
- HTTP/1.1 without Host: 400. Versions other than 1.x: 505. Transfer codings
  other than chunked: 501. CL with TE, duplicate CL, obs-fold, bad chunk sizes:
  400 (llhttp's strict mode), then close.

Flow control: when the client reads slower than we write, the transport passes
its high-water mark and `pause_writing` fires; the exchange's `on_pause` /
`on_resume` let whoever feeds it (the gateway's upstream, the emulator's engine)
stop and go, so memory stays bounded by the buffers, not by the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import httptools

from dualpool.http._exchange import Exchange, Request

if TYPE_CHECKING:
    from dualpool.http._listener import HttpServer

__all__ = ["HttpConnection"]

log = logging.getLogger("dualpool.http")

# Request headers the connection itself looks at.
_CHECKED = frozenset({b"content-length", b"host", b"transfer-encoding", b"expect", b"upgrade"})


class _Stop(Exception):
    """Raised inside a parser callback to stop parsing after a protocol error."""


class HttpConnection(asyncio.Protocol):
    """One client connection: parse, queue, hand to the handler, write answers in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.handler = server.handler
        self.limits = lim = server.limits
        self.server_header = server.server_header
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self.closing = False  # close once the current answer is complete
        self.current: Exchange | None = None
        self.queue: deque[Request] = deque()
        self.last_active = time.monotonic()
        self.write_paused = False
        self._cur: Request | None = None
        self._url = b""
        self._raw_head = 0  # bytes received while a head is incomplete
        self._chunk = 0  # the size of the last read
        self._reads = 0  # reads so far (the timer sees progress by it)
        self._reads_seen = -1
        self._stalled_since = 0.0
        self._head_chunk = 0  # the size of the read the current head began in
        self._in_head = False  # a request head is being parsed
        self._head_seen = 0.0  # when the timer first saw this head incomplete
        self._body: list[bytes] = []
        self._body_len = 0
        self._max_body = lim.max_body_bytes
        self._reading_paused = False
        self._dead = False  # stop parsing: an error answer is queued, then close
        self._eof = False
        self._continue = False  # a 100 Continue owed to the request being read
        self._maybe_upgrade = False  # the request being read may be an upgrade (llhttp pauses)
        self._running = False

    # ---- asyncio.Protocol --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=256 * 1024)
        conns = self.server.connections
        lim = self.limits.max_connections
        if lim and len(conns) >= lim:
            self._dead = True
            req = Request()
            req.error = (503, "too many connections")
            self.queue.append(req)
            self._run()
            return
        conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self.queue.clear()
        cur = self.current
        if cur is not None and not cur.done:
            cb = cur.on_disconnect
            cur.on_disconnect = None
            if cb is not None:
                cb()
            resume = cur.on_resume
            if resume is not None:
                resume()  # unblock a feeder waiting for the client to drain

    def pause_writing(self) -> None:
        self.write_paused = True
        cur = self.current
        if cur is not None and cur.on_pause is not None:
            cur.on_pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        cur = self.current
        if cur is not None and cur.on_resume is not None:
            cur.on_resume()

    def data_received(self, data: bytes) -> None:
        if self._dead:
            return
        self._chunk = len(data)
        self._reads += 1
        if self._in_head:
            self._raw_head += self._chunk
            lim = self.limits
            if self._raw_head > lim.max_header_bytes + lim.max_url_bytes:
                self._fail(431, "request headers are too large")
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as up:
            self._upgrade(data, int(up.args[0]))
        except _Stop:
            pass
        except httptools.HttpParserError as exc:
            if not self._dead:
                cause = exc.__cause__ or exc.__context__
                if isinstance(cause, _Stop):
                    return
                self._fail(400, f"malformed HTTP request: {exc}")

    def eof_received(self) -> bool | None:
        if self.server.eof_aborts:
            return None  # uvicorn's reading: the client is gone (connection_lost follows)
        # Half-close: finish answering what was asked, then close (see `exchange_done`).
        self._eof = True
        if self.current is None and not self.queue:
            self.close()
        return True

    # ---- httptools callbacks -------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._raw_head = 0
        self._head_chunk = self._chunk
        self._in_head = True
        self._head_seen = 0.0
        self._body = []
        self._body_len = 0
        self._maybe_upgrade = False
        self._cur = Request()

    def on_url(self, url: bytes) -> None:
        self._url += url  # measured once complete (memory: the raw byte bound)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Count and size are checked once the head is complete (memory meanwhile is
        # bounded by the raw byte count in data_received).
        cur = self._cur
        if cur is not None:
            cur.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        req = self._cur
        if req is None:  # pragma: no cover - httptools always calls message_begin
            req = self._cur = Request()
        p = self.parser
        req.method = p.get_method()
        if req.method == b"CONNECT":
            self._maybe_upgrade = True
        url = req.target = self._url
        lim = self.limits
        if len(url) > lim.max_url_bytes:
            self._fail(414, "the request URL is too long")
            raise _Stop
        q = url.find(b"?")
        if q >= 0:
            req.path, req.query = url[:q], url[q + 1 :]
        else:
            req.path = url
        version = req.version = p.get_http_version()
        req.keep_alive = p.should_keep_alive()
        if version != "1.1" and not version.startswith("1."):
            self._fail(505, f"HTTP/{version} is not supported; use HTTP/1.1")
            raise _Stop
        headers = req.headers
        if len(headers) > lim.max_headers:
            self._fail(431, f"more than {lim.max_headers} request headers")
            raise _Stop
        # The head came in the read it began in plus the reads after it: only a head
        # that could be over the limit is measured exactly.
        if self._raw_head + self._head_chunk > lim.max_header_bytes and (
            sum(len(k) + len(v) for k, v in headers) > lim.max_header_bytes
        ):
            self._fail(431, f"request headers exceed {lim.max_header_bytes} bytes")
            raise _Stop
        expect = None
        host = False
        for k, v in headers:
            if k not in _CHECKED:
                continue
            if k == b"upgrade":
                self._maybe_upgrade = True
            elif k == b"content-length":
                if v.isdigit() and int(v) > self._max_body:
                    self._fail(413, f"request body exceeds the limit of {self._max_body} bytes")
                    raise _Stop
            elif k == b"host":
                host = True
            elif k == b"transfer-encoding":
                if v.strip().lower() != b"chunked":
                    self._fail(501, f"transfer coding {v.decode('latin-1')!r} is not supported")
                    raise _Stop
            elif k == b"expect":
                expect = v
        if not host and version == "1.1":
            self._fail(400, "HTTP/1.1 requests need a Host header")
            raise _Stop
        if expect is not None:
            if expect.strip().lower() != b"100-continue":
                self._fail(417, f"expectation {expect.decode('latin-1')!r} is not supported")
                raise _Stop
            if version == "1.1":
                if self.current is None and not self.queue:
                    self._write_continue()
                else:
                    self._continue = True  # after the answers before it (`_run`)

    def on_body(self, body: bytes) -> None:
        self._continue = False
        self._body_len += len(body)
        if self._body_len > self._max_body:
            self._fail(413, f"request body exceeds the limit of {self._max_body} bytes")
            raise _Stop
        self._body.append(body)

    def on_message_complete(self) -> None:
        req = self._cur
        self._cur = None
        self._continue = False
        if req is None:  # pragma: no cover - httptools always calls headers_complete
            return
        body = self._body
        if body:
            req.body = body[0] if len(body) == 1 else b"".join(body)
            self._body = []
        req.received = self.last_active = time.monotonic()
        if self._maybe_upgrade and self.parser.should_upgrade():
            # Answered as plain HTTP/1.1 by `_upgrade`, once parsing stopped.
            self._cur = req
            return
        if self.current is None and not self._running and not self.queue:
            # The common case: nothing ahead of it, answer it now.
            self._running = True
            ex = self.current = Exchange(self, req)
            try:
                result = self.handler.handle(req, ex)
            except Exception:
                log.exception("error while answering %s %s", req.method, req.path)
                self._internal_error(ex)
                result = None
            finally:
                self._running = False
            if result is not None:
                task = self.loop.create_task(cast(Any, result))
                task.add_done_callback(lambda t: self._task_done(t, ex))
            if self.current is None and (self.queue or self._continue):
                self._run()
            return
        self.queue.append(req)
        if self.current is None and not self._running:
            self._run()
        elif len(self.queue) >= self.limits.max_pipeline and not self._reading_paused:
            self._reading_paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def _upgrade(self, data: bytes, offset: int) -> None:
        """An Upgrade (or CONNECT) request: answer it as HTTP/1.1, keep parsing HTTP/1.1."""
        req = self._cur
        self._cur = None
        if req is not None:
            if req.header(b"content-length") not in (None, b"0") or req.header(
                b"transfer-encoding"
            ):
                self._fail(400, "protocol upgrades with a request body are not supported")
                return
            self.queue.append(req)
            if self.current is None and not self._running:
                self._run()
        # (req is None: already queued as a plain request.) Stay HTTP/1.1.
        self.parser = httptools.HttpRequestParser(self)
        rest = data[offset:]
        if rest and not self._dead:
            self.data_received(rest)

    # ---- answering in order -------------------------------------------------------------
    def _run(self) -> None:
        """Start the next queued request while nothing is being answered."""
        self._running = True
        try:
            while self.current is None and self.queue and not self.closed:
                req = self.queue.popleft()
                if (
                    self._reading_paused
                    and len(self.queue) < self.limits.max_pipeline // 2
                    and self.transport is not None
                ):
                    self._reading_paused = False
                    self.transport.resume_reading()
                ex = self.current = Exchange(self, req)
                if req.error is not None:
                    status, message = req.error
                    ex.keep_alive = False
                    ex.send(status, self.handler.error_body(status, message))
                    continue
                self._call(req, ex)
            if self.current is None and self._continue and not self.closed:
                self._continue = False
                self._write_continue()
        finally:
            self._running = False

    def _call(self, req: Request, ex: Exchange) -> None:
        try:
            result = self.handler.handle(req, ex)
        except Exception:
            log.exception("error while answering %s %s", req.method, req.path)
            self._internal_error(ex)
            return
        if result is not None:
            task = self.loop.create_task(cast(Any, result))
            task.add_done_callback(lambda t: self._task_done(t, ex))

    def _task_done(self, task: asyncio.Task[Any], ex: Exchange) -> None:
        if task.cancelled():
            if not ex.done:
                ex.abort()
            return
        exc = task.exception()
        if exc is not None:
            log.error("error while answering a request", exc_info=exc)
            self._internal_error(ex)

    def _internal_error(self, ex: Exchange) -> None:
        """A bug in a handler: 500 if nothing was sent yet, else cut the stream."""
        if ex.done:
            return
        if ex.streaming:
            ex.abort()
        else:
            ex.keep_alive = False
            ex.send(500, self.handler.error_body(500, "internal error"))

    def exchange_done(self, ex: Exchange) -> None:
        if ex is not self.current:
            return
        self.current = None
        self.last_active = self.server.now  # the timer's clock: idle is counted in ticks
        if not ex.keep_alive or self.closing:
            self.close()
            return
        if self._eof and not self.queue:
            self.close()
            return
        if not self._running and (self.queue or self._continue):
            self._run()

    def _write_continue(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _fail(self, status: int, message: str) -> None:
        """A protocol-level error: answer it after the answers before it, then close."""
        if self._dead:
            return
        self._dead = True
        self._cur = None
        self._continue = False
        self._in_head = False
        req = Request()
        req.error = (status, message)
        self.queue.append(req)
        if self.transport is not None and not self._reading_paused:
            self.transport.pause_reading()
            self._reading_paused = True
        if self.current is None and not self._running:
            self._run()

    # ---- closing -------------------------------------------------------------------------
    def close(self) -> None:
        """Close now if idle, else after the current answer."""
        self.closing = True
        if self.current is None and self.transport is not None and not self.closed:
            self.closed = True
            self.server.connections.discard(self)
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once (RST), whatever is in progress."""
        self.closing = True
        if self.transport is not None and not self.closed:
            self.closed = True
            self.server.connections.discard(self)
            self.transport.abort()

    def idle_check(self, now: float) -> None:
        """Close after the idle timeout; answer 408 to a head that takes too long."""
        if self.current is not None or self.queue or self.closed:
            return
        lim = self.limits
        if self._in_head:
            if not self._head_seen:
                self._head_seen = now
            elif now - self._head_seen > lim.head_timeout:
                self._fail(408, "the request head took too long")
        elif self._cur is not None:
            # A body on its way: fine while bytes keep coming.
            if self._reads != self._reads_seen:
                self._reads_seen = self._reads
                self._stalled_since = now
            elif now - self._stalled_since > lim.idle_timeout:
                self._fail(408, "the request body stopped arriving")
        elif now - self.last_active > lim.idle_timeout:
            self.close()
