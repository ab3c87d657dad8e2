"""The upstream side: keep-alive HTTP/1.1 connections to backends, and one-shot GETs.

An `UpstreamConnection` carries one exchange at a time and reports it to a
`Sink` from inside the protocol callbacks (head, body pieces, completion, error),
so a streamed answer is relayed to the client in the same event-loop turn that
reads it: no queue, no task switch per chunk. httptools decodes Content-Length
and chunked bodies alike.

`fetch()` is the simple path for background work (health probes, /metrics
scrapes, /v1/models discovery): a fresh connection, `Connection: close`, a
bounded body.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Protocol, cast

import httptools

__all__ = ["FetchError", "Sink", "UpstreamConnection", "fetch"]


class Sink(Protocol):
    """Receives one exchange's answer, from the protocol callbacks."""

    def on_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_complete(self, keep_alive: bool) -> None: ...

    def on_error(self, exc: BaseException) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to a backend; reused by its `Backend`'s pool."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.sink: Sink | None = None
        self.closed = False
        # True once any byte of the current answer arrived.
        self.got_bytes = False
        # True when this connection already served an exchange (a stale keep-alive
        # connection fails on first use without a byte: retry it, do not blame the backend).
        self.reused = False
        self._headers: list[tuple[bytes, bytes]] = []

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
            self._error(ConnectionError(f"malformed HTTP answer from backend: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.sink is not None:
            # A body without Content-Length ends at EOF: that is a complete answer.
            with contextlib.suppress(httptools.HttpParserError):
                self.parser.feed_data(b"")
        if self.sink is not None:
            self._error(exc or ConnectionResetError("backend closed the connection"))

    def eof_received(self) -> bool | None:
        return None

    # ---- httptools callbacks -------------------------------------------------------
    def on_message_begin(self) -> None:
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self.sink is not None:
            self.sink.on_head(self.parser.get_status_code(), self._headers)

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink.on_body(body)

    def on_message_complete(self) -> None:
        sink = self.sink
        self.sink = None
        keep = self.parser.should_keep_alive() and not self.closed
        if not keep:
            self.close()
        if sink is not None:
            sink.on_complete(keep)

    # ---- use -------------------------------------------------------------------------
    def send(self, data: bytes, sink: Sink) -> None:
        """Write one request; the answer goes to `sink`."""
        self.sink = sink
        self.got_bytes = False
        assert self.transport is not None
        self.transport.write(data)

    def _error(self, exc: BaseException) -> None:
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


class FetchError(Exception):
    """A background GET failed (connection, timeout, malformed or oversized answer)."""


class _Collect:
    def __init__(self) -> None:
        self.status = 0
        self.body: list[bytes] = []
        self.size = 0
        self.done = False

    def on_status(self, status: bytes) -> None:
        pass

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > 8 * 1024 * 1024:
            raise FetchError("answer larger than 8 MiB")
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


async def fetch(
    host: str, port: int, path: str, timeout: float, *, headers: bytes = b""
) -> tuple[int, bytes]:
    """GET `path` on a fresh connection; returns (status, body). Raises FetchError."""

    async def run() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            hostport = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
            writer.write(
                f"GET {path} HTTP/1.1\r\nhost: {hostport}\r\nconnection: close\r\n".encode()
                + headers
                + b"\r\n"
            )
            col = _Collect()
            parser = httptools.HttpResponseParser(col)
            while not col.done:
                data = await reader.read(65536)
                parser.feed_data(data)
                if not data:
                    break
            if not col.done:
                raise FetchError("connection closed before the answer was complete")
            return parser.get_status_code(), b"".join(col.body)
        finally:
            writer.close()

    try:
        return await asyncio.wait_for(run(), timeout)
    except FetchError:
        raise
    except TimeoutError:
        raise FetchError(f"no answer within {timeout:g}s") from None
    except (OSError, httptools.HttpParserError) as exc:
        raise FetchError(str(exc) or type(exc).__name__) from None
