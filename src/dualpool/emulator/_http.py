"""A small HTTP/1.1 server on asyncio protocols and httptools.

Why not an ASGI stack: the engine loop writes every stream's SSE chunk for a
step straight into its transport, synchronously, in one pass; no task or
queue wakes per request per token, and a closed socket is noticed at once
(`connection_lost`), which is when the engine must free the request's KV
blocks. Everything a handler does is synchronous; it answers now
(`Exchange.send`) or later (`start_stream` / `write` / `end`, or `send`
from the engine loop).

Supported: keep-alive, pipelined requests (answered in order), request bodies
by Content-Length or chunked, chunked streaming responses. Not supported:
Expect: 100-continue, upgrades, HTTP/2.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol

import httptools

__all__ = ["Exchange", "HttpHandler", "HttpServerProtocol", "Request"]

# Refuse bodies above this (413), like a reverse proxy would.
MAX_BODY_BYTES = 64 << 20

_REASONS = {s.value: s.phrase for s in HTTPStatus}


@dataclass(slots=True)
class Request:
    """One parsed HTTP request."""

    method: str
    path: str
    query: str
    # Lower-cased header names; the last value wins.
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class HttpHandler(Protocol):
    """What the server calls: synchronously, once per complete request."""

    def handle(self, request: Request, exchange: Exchange) -> None: ...


_date_cache: tuple[int, bytes] = (0, b"")


def _date_header() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True).encode())
    return _date_cache[1]


class Exchange:
    """The response side of one request: a full answer, or a chunked stream."""

    __slots__ = ("_conn", "done", "keep_alive", "on_disconnect", "streaming")

    def __init__(self, conn: HttpServerProtocol, keep_alive: bool) -> None:
        self._conn = conn
        self.keep_alive = keep_alive
        self.streaming = False
        self.done = False
        # Called once if the client goes away before the response is complete.
        self.on_disconnect: Callable[[], None] | None = None

    @property
    def connected(self) -> bool:
        return self._conn.transport is not None

    def _head(self, status: int, content_type: str, extra: bytes) -> bytes:
        return b"".join(
            (
                b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, "").encode()),
                b"date: ",
                _date_header(),
                b"\r\nserver: dualpool-emulate\r\ncontent-type: ",
                content_type.encode(),
                b"\r\n",
                # NOTE: before `extra`, which ends the head with its blank line.
                b"" if self.keep_alive else b"connection: close\r\n",
                extra,
            )
        )

    def send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        """The whole response at once (Content-Length)."""
        if self.done:
            return
        self.done = True
        transport = self._conn.transport
        if transport is not None:
            head = self._head(status, content_type, b"content-length: %d\r\n\r\n" % len(body))
            transport.write(head + body)
        self._conn.exchange_done(self)

    def start_stream(self, status: int = 200, content_type: str = "text/event-stream") -> None:
        """Send the head of a chunked response; then `write` chunks and `end`."""
        self.streaming = True
        transport = self._conn.transport
        if transport is not None:
            transport.write(self._head(status, content_type, b"transfer-encoding: chunked\r\n\r\n"))

    def write(self, data: bytes) -> None:
        """One chunk of a streamed body (ignored once the client is gone)."""
        transport = self._conn.transport
        if transport is not None and data:
            transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end(self, data: bytes = b"") -> None:
        """Last chunk (optional) and the chunked terminator."""
        if self.done:
            return
        self.done = True
        transport = self._conn.transport
        if transport is not None:
            if data:
                transport.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
            else:
                transport.write(b"0\r\n\r\n")
        self._conn.exchange_done(self)


class HttpServerProtocol(asyncio.Protocol):
    """One client connection; requests answered strictly in order."""

    def __init__(self, handler: HttpHandler, connections: set[HttpServerProtocol]) -> None:
        self._handler = handler
        self._connections = connections
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_len = 0
        self._pending: deque[tuple[Request, bool]] = deque()
        self.current: Exchange | None = None
        self._closing = False

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass; same interface.
        self.transport = transport  # type: ignore[assignment]
        self._connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, b"upgrades are not supported")
        except httptools.HttpParserError:
            self._fail(400, b"malformed HTTP request")
        except _BodyTooLarge:
            self._fail(413, b"request body too large")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._connections.discard(self)
        self._pending.clear()
        cur = self.current
        self.current = None
        if cur is not None and not cur.done and cur.on_disconnect is not None:
            cur.on_disconnect()

    def close(self) -> None:
        """Close once the current response is complete (now if idle)."""
        self._closing = True
        if self.current is None and self.transport is not None:
            self.transport.close()

    # -- httptools callbacks -----------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_len = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > MAX_BODY_BYTES:
            raise _BodyTooLarge
        self._body.append(body)

    def on_message_complete(self) -> None:
        url = self._url.decode("latin-1")
        path, _, query = url.partition("?")
        req = Request(
            self._parser.get_method().decode("latin-1"),
            path,
            query,
            self._headers,
            b"".join(self._body),
        )
        self._pending.append((req, bool(self._parser.should_keep_alive())))
        if self.current is None:
            self._next()

    # -- internals ----------------------------------------------------------------

    def _next(self) -> None:
        while self.current is None and self._pending and self.transport is not None:
            req, keep_alive = self._pending.popleft()
            ex = Exchange(self, keep_alive and not self._closing)
            self.current = ex
            self._handler.handle(req, ex)

    def exchange_done(self, ex: Exchange) -> None:
        if ex is not self.current:
            return
        self.current = None
        if not ex.keep_alive or self._closing:
            if self.transport is not None:
                self.transport.close()
            return
        if self._pending:
            # Answer the next pipelined request on a later turn of the loop, so
            # a long pipeline cannot recurse.
            asyncio.get_running_loop().call_soon(self._next)

    def _fail(self, status: int, message: bytes) -> None:
        if self.transport is None:
            return
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s"
            % (status, _REASONS.get(status, "").encode(), len(message), message)
        )
        self.transport.close()


class _BodyTooLarge(Exception):
    pass
