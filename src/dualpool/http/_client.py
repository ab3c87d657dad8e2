"""The upstream client: keep-alive HTTP/1.1 connections to one address, typed errors.

Two levels:

- `Connection` + `Sink`: one exchange at a time reported from inside the protocol
  callbacks (head, body pieces, completion, error). A streamed answer can be relayed
  in the same event-loop turn that reads it: no queue, no task switch per chunk.
  The gateway's request path uses this.
- `ConnectionPool.request()`: await a whole answer (`Response`), or get the body
  piece by piece through `on_chunk(data, t)` (t: `loop.time()` when it arrived),
  with a read timeout per byte gap. Probes, scrapes, tests and load generators use
  this; `fetch()` is a one-shot GET on a fresh connection.

What the parser hands over: Content-Length, chunked (trailers dropped) and
close-delimited bodies (HTTP/1.0 backends, or no framing: the body ends at EOF);
interim 1xx answers (100, 103) are skipped, the final answer is what counts. Every
failure is an `UpstreamError` subclass (see `_errors.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl as _ssl
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol, cast

import httptools

from dualpool.http._errors import (
    ClosedBeforeResponse,
    ClosedMidResponse,
    ConnectError,
    ConnectTimeout,
    NotSent,
    ProtocolError,
    ResponseTooLarge,
    UpstreamError,
    UpstreamTimeout,
)
from dualpool.http._stream import StreamingResponse
from dualpool.http._stream import stream as _stream

__all__ = ["Connection", "ConnectionPool", "Response", "Sink", "fetch", "format_request"]


class Sink(Protocol):
    """Receives one exchange's answer, from the protocol callbacks."""

    def on_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_complete(self, keep_alive: bool) -> None: ...

    def on_error(self, exc: UpstreamError) -> None: ...


def format_request(
    method: str,
    path: str,
    host_header: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes = b"",
) -> bytes:
    """A request's bytes: Content-Length framing, `host` first."""
    parts = [method.encode(), b" ", path.encode(), b" HTTP/1.1\r\n", host_header]
    for k, v in headers:
        parts += (k, b": ", v, b"\r\n")
    if body or method not in ("GET", "HEAD"):
        parts.append(b"content-length: %d\r\n" % len(body))
    parts += (b"\r\n", body)
    return b"".join(parts)


class Connection(asyncio.Protocol):
    """One keep-alive connection to a backend; one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.sink: Sink | None = None
        self.closed = False
        # True once any byte of the current answer arrived.
        self.got_bytes = False
        # True when this connection already served an exchange.
        self.reused = False
        # The current request was HEAD: its answer has no body whatever it says.
        self.head_request = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._interim = False
        self._status = 0  # the final status of the answer in progress (0: none yet)

    # ---- asyncio.Protocol --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._error(ProtocolError(f"malformed HTTP answer: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close our side too: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.sink is None:
            return
        if exc is None and self._until_eof():
            # A close-delimited body: the clean end of the connection ends it.
            sink = self.sink
            self.sink = None
            sink.on_complete(False)
            return
        why = f": {exc}" if exc else ""
        if self.got_bytes:
            self._error(ClosedMidResponse(f"connection closed in the middle of the answer{why}"))
        else:
            self._error(
                ClosedBeforeResponse(
                    f"connection closed before any answer{why}", reused=self.reused
                )
            )

    def _until_eof(self) -> bool:
        """The answer in progress has no framing: its body ends with the connection."""
        status = self._status
        if not status or self.head_request or status == 204 or status == 304:
            return False
        return not any(
            k == b"content-length" or k == b"transfer-encoding" for k, _ in self._headers
        )

    # ---- httptools callbacks -------------------------------------------------------
    def on_message_begin(self) -> None:
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            self._interim = True  # 100 Continue, 103 Early Hints: the answer follows
            return
        self._status = status
        if self.sink is not None:
            self.sink.on_head(status, self._headers)
        if self.head_request:
            # llhttp cannot know the request was HEAD: the answer ends with its head.
            self._complete(self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        if self.sink is not None and body:
            self.sink.on_body(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self.head_request:
            return
        self._status = 0
        sink = self.sink
        self.sink = None
        keep = self.parser.should_keep_alive() and not self.closed
        if not keep:
            self.close()
        if sink is not None:
            sink.on_complete(keep)

    def _complete(self, keep: bool) -> None:
        sink = self.sink
        self.sink = None
        keep = keep and not self.closed
        if not keep:
            self.close()
        if sink is not None:
            sink.on_complete(keep)

    # ---- use -------------------------------------------------------------------------
    def send(self, data: bytes, sink: Sink, *, head: bool = False) -> None:
        """Write one request; its answer goes to `sink`.

        Raises `NotSent` (the sink is not called) when the connection is already
        closed or closing: the request did not leave, send it elsewhere."""
        t = self.transport
        if t is None or self.closed or t.is_closing():
            self.closed = True
            raise NotSent("the connection was closed before the request was sent")
        self.sink = sink
        self.got_bytes = False
        self._status = 0
        self.head_request = head
        if head:
            # A HEAD answer with Content-Length must not wait for that many bytes.
            self.parser = httptools.HttpResponseParser(self)
        try:
            t.write(data)
        except (RuntimeError, OSError) as exc:
            self.sink = None
            self.close()
            raise NotSent(f"the connection failed while sending: {exc}") from None

    def _error(self, exc: UpstreamError) -> None:
        sink = self.sink
        self.sink = None
        self.close()
        if sink is not None:
            sink.on_error(exc)

    def detach(self) -> None:
        """Stop reporting to the current sink and drop the connection (abort an exchange)."""
        self.sink = None
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()


class Response:
    """A final answer. Times are `loop.time()`: sent, head, first body byte, done."""

    __slots__ = ("body", "headers", "keep_alive", "status", "t_done", "t_first", "t_head", "t_sent")

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.keep_alive = False
        self.t_sent = self.t_head = self.t_first = self.t_done = 0.0

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class _Collect:
    """A Sink that fills a Response and resolves a future; optional per-chunk callback."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        max_body: int,
        on_chunk: Callable[[bytes, float], None] | None,
    ) -> None:
        self.loop = loop
        self.resp = Response()
        self.parts: list[bytes] = []
        self.size = 0
        self.max_body = max_body
        self.on_chunk = on_chunk
        self.fut: asyncio.Future[Response] = loop.create_future()
        self.conn: Connection | None = None
        self.last = loop.time()  # the last byte (or the send)

    def on_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        r = self.resp
        r.status, r.headers = status, headers
        r.t_head = self.last = self.loop.time()

    def on_body(self, data: bytes) -> None:
        now = self.last = self.loop.time()
        if not self.resp.t_first:
            self.resp.t_first = now
        if self.on_chunk is not None:
            self.on_chunk(data, now)
            return
        self.size += len(data)
        if self.size > self.max_body:
            if self.conn is not None:
                self.conn.detach()
            self.on_error(ResponseTooLarge(f"answer larger than {self.max_body} bytes"))
            return
        self.parts.append(data)

    def on_complete(self, keep_alive: bool) -> None:
        r = self.resp
        r.body = b"".join(self.parts)
        r.keep_alive = keep_alive
        r.t_done = self.loop.time()
        if not self.fut.done():
            self.fut.set_result(r)

    def on_error(self, exc: UpstreamError) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc)


class ConnectionPool:
    """Keep-alive connections to one address (host, port), reused LIFO.

        pool = ConnectionPool("127.0.0.1", 8000)
        resp = await pool.request("POST", "/v1/completions", body=b"{...}",
                                  headers=[(b"content-type", b"application/json")])
        resp = await pool.request("POST", path, body=..., on_chunk=lambda d, t: ...)
        async with pool.stream("POST", path, body=...) as resp:
            async for data, t in resp: ...
        pool.close()

    `take_idle` / `connect` / `release` are the low-level steps for `Connection.send`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_idle: int = 64,
        connect_timeout: float = 5.0,
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.host_header = b"host: " + self.name.encode() + b"\r\n"
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self.ssl = ssl
        self.idle: list[Connection] = []
        self.closed = False

    def take_idle(self) -> Connection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def connect(self, timeout: float | None = None) -> Connection:
        """A fresh connection; raises ConnectError / ConnectTimeout."""
        loop = asyncio.get_running_loop()
        t = self.connect_timeout if timeout is None else timeout
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(Connection, self.host, self.port, ssl=self.ssl), t
            )
        except TimeoutError:
            raise ConnectTimeout(f"no connection to {self.name} within {t:g}s") from None
        except OSError as exc:
            raise ConnectError(f"cannot connect to {self.name}: {exc}") from None
        return conn

    def release(self, conn: Connection, keep_alive: bool) -> None:
        """Give a connection back after a complete exchange."""
        conn.reused = True
        if keep_alive and not conn.closed and not self.closed and len(self.idle) < self.max_idle:
            self.idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Close the idle connections; later releases close theirs."""
        for conn in self.idle:
            conn.close()
        self.idle.clear()

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes = b"",
        timeout: float = 30.0,
        max_body: int = 64 * 1024 * 1024,
        on_chunk: Callable[[bytes, float], None] | None = None,
    ) -> Response:
        """One exchange; the whole Response (body empty when `on_chunk` takes it).

        `timeout` bounds each wait for a byte (first or next). A stale keep-alive
        connection (closed by the peer before any byte) is retried once on a fresh
        one. Raises an `UpstreamError`."""
        loop = asyncio.get_running_loop()
        data = format_request(method, path, self.host_header, headers, body)
        for attempt in (0, 1):
            conn = self.take_idle() if attempt == 0 else None
            if conn is None:
                conn = await self.connect()
            col = _Collect(loop, max_body, on_chunk)
            col.conn = conn
            col.resp.t_sent = loop.time()
            try:
                conn.send(data, col, head=method == "HEAD")
                resp = await self._wait(col, conn, timeout)
            except (NotSent, ClosedBeforeResponse) as exc:
                if attempt == 0 and (isinstance(exc, NotSent) or exc.reused):
                    continue
                raise
            self.release(conn, resp.keep_alive)
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    def stream(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes = b"",
        timeout: float = 30.0,
    ) -> AbstractAsyncContextManager[StreamingResponse]:
        """`async with pool.stream(...) as resp: async for data, t in resp: ...`

        The head is awaited on entry; the body is iterated as it arrives (see
        `_stream.py`). Raises `UpstreamError`s as `request()` does."""
        return _stream(self, method, path, headers=headers, body=body, timeout=timeout)

    async def _wait(self, col: _Collect, conn: Connection, timeout: float) -> Response:
        loop = col.loop
        try:
            while True:
                remaining = col.last + timeout - loop.time()
                if remaining <= 0:
                    conn.detach()
                    first = not conn.got_bytes
                    which = "first" if first else "next"
                    raise UpstreamTimeout(
                        f"no {which} byte from {self.name} in {timeout:g}s", first_byte=first
                    )
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(col.fut), remaining)
        except asyncio.CancelledError:
            conn.detach()
            raise


async def fetch(
    host: str, port: int, path: str, timeout: float, *, headers: bytes = b""
) -> tuple[int, bytes]:
    """GET `path` on a fresh connection (`connection: close`); (status, body).

    `headers`: extra serialised header lines. At most 8 MiB. Raises UpstreamError."""
    pool = ConnectionPool(host, port, max_idle=0, connect_timeout=timeout)
    extra = [(b"connection", b"close")]
    for line in headers.split(b"\r\n"):
        k, sep, v = line.partition(b":")
        if sep:
            extra.append((k.strip().lower(), v.strip()))
    try:
        resp = await asyncio.wait_for(
            pool.request("GET", path, headers=extra, timeout=timeout, max_body=8 * 1024 * 1024),
            timeout * 2,
        )
    except TimeoutError:
        raise UpstreamTimeout(f"no answer from {pool.name} within {2 * timeout:g}s") from None
    return resp.status, resp.body
