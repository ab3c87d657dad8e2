"""`HttpServer`: a listening socket, its connections, and one timer for their timeouts.

server = HttpServer(handler, ServerLimits(idle_timeout=5), server_name=b"dualpool")
port = await server.listen("127.0.0.1", 0)
...
server.close()            # stop accepting
server.close_idle()       # close keep-alive connections with nothing in progress
await server.wait_closed()
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as _ssl
import time

from dualpool.http._exchange import Handler
from dualpool.http._server import HttpConnection
from dualpool.http._wire import DATE, ServerLimits

__all__ = ["HttpServer"]


class HttpServer:
    """Serves `handler` on one or more sockets with the given limits."""

    def __init__(
        self,
        handler: Handler,
        limits: ServerLimits | None = None,
        *,
        server_name: bytes = b"",
        loop: asyncio.AbstractEventLoop | None = None,
        eof_aborts: bool = False,
    ) -> None:
        """`eof_aborts`: a client's EOF means it is gone, abort what it asked (uvicorn,
        hence vLLM); else a half-closed client still gets its answers, then the close."""
        self.eof_aborts = eof_aborts
        self.handler = handler
        self.limits = limits or ServerLimits()
        self.server_header = b"server: " + server_name + b"\r\n" if server_name else b""
        self.loop = loop or asyncio.get_running_loop()
        DATE.tick()
        # The timer's clock (monotonic, refreshed each tick): idle times are counted on it.
        self.now = time.monotonic()
        self.connections: set[HttpConnection] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._timer: asyncio.TimerHandle | None = None

    def connection(self) -> HttpConnection:
        """The protocol factory (for `loop.create_server` or tests)."""
        return HttpConnection(self)

    async def listen(
        self,
        host: str,
        port: int,
        *,
        ssl: _ssl.SSLContext | None = None,
        backlog: int = 2048,
    ) -> int:
        """Listen on host:port (0: an ephemeral port); returns the bound port."""
        server = await self.loop.create_server(
            self.connection, host, port, reuse_address=True, backlog=backlog, ssl=ssl
        )
        self._servers.append(server)
        if self._timer is None:
            self._schedule()
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    def _schedule(self) -> None:
        lim = self.limits
        tick = max(0.05, min(1.0, lim.idle_timeout / 4, lim.head_timeout / 4))
        self._timer = self.loop.call_later(tick, self._sweep)

    def _sweep(self) -> None:
        DATE.tick()  # the Date line answers read (at most one tick old)
        self.now = now = time.monotonic()
        for conn in list(self.connections):
            conn.idle_check(now)
        self._schedule()

    def close(self) -> None:
        """Stop accepting new connections (the open ones stay)."""
        for s in self._servers:
            s.close()

    def close_idle(self) -> int:
        """Close every connection with nothing in progress; the number still busy."""
        for conn in list(self.connections):
            if conn.current is None and not conn.queue:
                conn.close()
        return len(self.connections)

    def close_all(self) -> None:
        """Close each connection after its current answer."""
        for conn in list(self.connections):
            conn.close()

    def abort_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """After `close()`: wait for the sockets (uvloop: and their connections) to close;
        connections still open after `timeout` are aborted."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for s in self._servers:
            try:
                await asyncio.wait_for(s.wait_closed(), timeout)
            except TimeoutError:
                self.abort_all()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(s.wait_closed(), 1.0)
            except Exception:  # pragma: no cover - already closed
                pass
