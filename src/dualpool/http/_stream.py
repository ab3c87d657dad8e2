"""A streamed answer as an async iterator: `ConnectionPool.stream()` (see `_client.py`).

    async with stream(pool, "POST", "/v1/completions", body=payload) as resp:
        resp.status, resp.t_head                 # the head has arrived
        async for data, t in resp:               # each body piece, loop.time() on arrival
            ...

Reading pauses when the consumer falls `_HIGH` pieces behind and resumes once it
has caught up (backpressure to the backend). Leaving the block before the end
drops the connection (the backend aborts the generation); a complete answer
returns it to the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from dualpool.http._errors import ClosedBeforeResponse, NotSent, UpstreamError, UpstreamTimeout

if TYPE_CHECKING:
    from dualpool.http._client import Connection, ConnectionPool

__all__ = ["StreamingResponse", "stream"]

_HIGH = 64
_LOW = 8


class StreamingResponse:
    """The head of an answer, and its body as `async for (data, t) in response`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.t_sent = loop.time()
        self.t_head = 0.0
        self.complete = False
        self.keep_alive = False
        self._pieces: deque[tuple[bytes, float]] = deque()
        self._error: UpstreamError | None = None
        self._head: asyncio.Future[None] = loop.create_future()
        self._wake: asyncio.Future[None] | None = None
        self._conn: Connection | None = None
        self._paused = False

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    # ---- Sink -----------------------------------------------------------------------
    def on_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status, self.headers, self.t_head = status, headers, self.loop.time()
        if not self._head.done():
            self._head.set_result(None)

    def on_body(self, data: bytes) -> None:
        self._pieces.append((data, self.loop.time()))
        if len(self._pieces) >= _HIGH and self._conn is not None and not self._paused:
            self._paused = True
            self._conn.pause_reading()
        self._notify()

    def on_complete(self, keep_alive: bool) -> None:
        self.complete = True
        self.keep_alive = keep_alive
        self._notify()

    def on_error(self, exc: UpstreamError) -> None:
        self._error = exc
        if not self._head.done():
            self._head.set_exception(exc)
        self._notify()

    def _notify(self) -> None:
        w = self._wake
        if w is not None and not w.done():
            w.set_result(None)

    # ---- the consumer ---------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[tuple[bytes, float]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[tuple[bytes, float]]:
        pieces = self._pieces
        while True:
            while pieces:
                item = pieces.popleft()
                if self._paused and len(pieces) <= _LOW and self._conn is not None:
                    self._paused = False
                    self._conn.resume_reading()
                yield item
            if self._error is not None:
                raise self._error
            if self.complete:
                return
            self._wake = self.loop.create_future()
            try:
                await asyncio.wait_for(self._wake, self.timeout)
            except TimeoutError:
                if self._conn is not None:
                    self._conn.detach()
                raise UpstreamTimeout(
                    f"no next byte in {self.timeout:g}s", first_byte=False
                ) from None
            finally:
                self._wake = None


@contextlib.asynccontextmanager
async def stream(
    pool: ConnectionPool,
    method: str,
    path: str,
    *,
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes = b"",
    timeout: float = 30.0,
) -> AsyncIterator[StreamingResponse]:
    """One exchange whose body is read as it arrives (see the module docstring)."""
    from dualpool.http._client import format_request

    loop = asyncio.get_running_loop()
    data = format_request(method, path, pool.host_header, headers, body)
    resp: StreamingResponse | None = None
    conn: Connection | None = None
    for attempt in (0, 1):
        conn = pool.take_idle() if attempt == 0 else None
        if conn is None:
            conn = await pool.connect()
        resp = StreamingResponse(loop, timeout)
        resp._conn = conn
        try:
            conn.send(data, resp, head=method == "HEAD")
            try:
                await asyncio.wait_for(asyncio.shield(resp._head), timeout)
            except TimeoutError:
                conn.detach()
                raise UpstreamTimeout(f"no first byte from {pool.name} in {timeout:g}s") from None
        except (NotSent, ClosedBeforeResponse) as exc:
            if attempt == 0 and (isinstance(exc, NotSent) or exc.reused):
                continue  # a stale keep-alive connection: once more on a fresh one
            raise
        break
    assert resp is not None and conn is not None
    try:
        yield resp
    finally:
        if resp.complete:
            pool.release(conn, resp.keep_alive)
        else:
            conn.detach()
