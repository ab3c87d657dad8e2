"""All the HTTP `dualpool bench` does, behind one narrow interface.

    Endpoint(base_url)                    where requests go (http://host:port[/prefix])
    Client(endpoint, loop)                keep-alive connections, opened on demand
    client.send(path, headers, body, handler)
        handler.on_head(t, status, headers)    t: time.perf_counter() at the callback
        handler.on_body(t, data)               each piece of the body as it arrives
        handler.on_complete(t)                 the answer is complete
        handler.on_error(t, exc)               connect error, reset, protocol error
    client.abort(exchange) / client.close()

It is built on the project's one HTTP client (`dualpool.http`: `Connection` +
`Sink` callbacks over httptools, `ConnectionPool`), so a token chunk is
timestamped inside the protocol callback that reads it: no task, queue or
await between the socket and the clock. Nothing else in `dualpool.bench`
touches sockets or HTTP, so moving to another HTTP client changes this file only.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from dualpool.errors import ConfigError
from dualpool.http import (
    Connection,
    ConnectionPool,
    NotSent,
    UpstreamError,
    fetch,
    format_request,
)

__all__ = ["Client", "Endpoint", "Exchange", "Handler", "get"]

_now = time.perf_counter


class Handler(Protocol):
    """Receives one exchange's events, each with the perf_counter time it happened."""

    def on_head(self, t: float, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...

    def on_body(self, t: float, data: bytes) -> None: ...

    def on_complete(self, t: float) -> None: ...

    def on_error(self, t: float, exc: BaseException) -> None: ...


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An OpenAI-compatible base URL: `http://host:port` with an optional path prefix."""

    host: str
    port: int
    # path prefix before /v1/... ("" for a bare host:port)
    prefix: str = ""

    @classmethod
    def parse(cls, url: str, flag: str = "url") -> Endpoint:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http":
            raise ConfigError(flag, f"only http:// endpoints are supported, got {url!r}")
        if not parts.hostname:
            raise ConfigError(flag, f"no host in {url!r}; expected e.g. http://127.0.0.1:8000")
        try:
            port = parts.port or 80
        except ValueError:
            raise ConfigError(flag, f"bad port in {url!r}") from None
        prefix = parts.path.rstrip("/")
        if prefix.endswith("/v1"):
            prefix = prefix[:-3]  # accept the OpenAI SDK's base_url form too
        return cls(parts.hostname, port, prefix)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.prefix}"

    def host_header(self) -> bytes:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}".encode()


class Exchange:
    """One request in flight: adapts the upstream `Sink` callbacks to a `Handler`."""

    __slots__ = ("client", "conn", "data", "done", "handler", "retried")

    def __init__(self, client: Client, handler: Handler, data: bytes) -> None:
        self.client = client
        self.handler = handler
        self.data = data
        self.conn: Connection | None = None
        self.done = False
        # A kept-alive connection the server closed meanwhile fails before any
        # byte of the answer: the request is sent again once, on a new connection.
        self.retried = False

    # -- Sink ------------------------------------------------------------------
    def on_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.handler.on_head(_now(), status, headers)

    def on_body(self, data: bytes) -> None:
        self.handler.on_body(_now(), data)

    def on_complete(self, keep_alive: bool) -> None:
        t = _now()
        if self.done:
            return
        self.done = True
        conn, self.conn = self.conn, None
        if conn is not None:
            self.client._release(conn, keep_alive)
        self.handler.on_complete(t)

    def on_error(self, exc: BaseException) -> None:
        t = _now()
        if self.done:
            return
        conn, self.conn = self.conn, None
        if conn is not None:
            self.client._release(conn, False)
            if conn.reused and not conn.got_bytes and not self.retried:
                self.retried = True
                self.client._connect(self)
                return
        self.done = True
        self.handler.on_error(t, exc)


class Client:
    """Keep-alive HTTP/1.1 connections to one endpoint; one exchange per connection.

    Connections come from a `dualpool.http.ConnectionPool` (idle ones reused LIFO);
    this class adds what a load generator needs on top: sending without awaiting
    (the answer arrives through the `Handler`), aborting, and closing every
    connection it opened, idle or busy."""

    def __init__(self, endpoint: Endpoint, loop: asyncio.AbstractEventLoop) -> None:
        self.endpoint = endpoint
        self.loop = loop
        self._pool = ConnectionPool(endpoint.host, endpoint.port, max_idle=1 << 16)
        self._open: set[Connection] = set()
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, path: str, headers: list[tuple[str, str]], body: bytes, h: Handler) -> Exchange:
        """POST `body` to prefix + `path`; the answer goes to `h`. Never raises."""
        data = format_request(
            "POST",
            self.endpoint.prefix + path,
            self._pool.host_header,
            [(b"content-type", b"application/json")]
            + [(k.encode(), v.encode()) for k, v in headers],
            body,
        )
        ex = Exchange(self, h, data)
        while True:
            conn = self._pool.take_idle()
            if conn is None:
                break
            try:
                ex.conn = conn
                conn.send(ex.data, ex)
                return ex
            except NotSent:  # closed by the server meanwhile: try the next one
                ex.conn = None
                self._open.discard(conn)
        self._connect(ex)
        return ex

    def _connect(self, ex: Exchange) -> None:
        task = self.loop.create_task(self._connect_and_send(ex, ex.data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect_and_send(self, ex: Exchange, data: bytes) -> None:
        try:
            conn = await self._pool.connect()
        except UpstreamError as exc:
            ex.retried = True
            ex.on_error(exc)
            return
        if ex.done or self._closed:  # aborted while connecting
            conn.close()
            return
        self._open.add(conn)
        ex.conn = conn
        try:
            conn.send(data, ex)
        except NotSent as exc:
            ex.conn = None
            self._open.discard(conn)
            ex.retried = True
            ex.on_error(exc)

    def _release(self, conn: Connection, keep_alive: bool) -> None:
        if keep_alive and not conn.closed and not self._closed:
            self._pool.release(conn, True)
        else:
            conn.close()
            self._open.discard(conn)

    def abort(self, ex: Exchange) -> None:
        """Drop an exchange (its connection is closed; no more callbacks)."""
        ex.done = True
        conn, ex.conn = ex.conn, None
        if conn is not None:
            conn.detach()
            self._open.discard(conn)

    @property
    def connections(self) -> int:
        return len(self._open)

    def close(self) -> None:
        self._closed = True
        for conn in list(self._open):
            conn.detach()
        self._open.clear()
        self._pool.close()
        for task in list(self._tasks):
            task.cancel()


async def get(
    endpoint: Endpoint,
    path: str,
    timeout: float = 10.0,
    headers: list[tuple[str, str]] | None = None,
) -> tuple[int, bytes]:
    """A one-shot GET (model discovery, /metrics); raises OSError on failure."""
    extra = b"".join(f"{k}: {v}\r\n".encode() for k, v in headers or ())
    try:
        return await fetch(
            endpoint.host, endpoint.port, endpoint.prefix + path, timeout, headers=extra
        )
    except UpstreamError as exc:
        raise OSError(str(exc)) from None


def now() -> float:
    """The clock every timestamp of `dualpool.bench` comes from."""
    return _now()
