"""Run a gateway in a background thread: for tests, the demo and notebooks.

    from dualpool.gateway.testing import GatewayThread

    gw = GatewayThread({"pools": [...]})   # a config mapping, as fleet.yaml holds
    gw.url                                 # http://127.0.0.1:<port>
    gw.stop()

The gateway runs on its own event loop (uvloop) in a daemon thread; `run()`
executes a plain function on that loop to read the gateway's state safely.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any

from dualpool.gateway._config import parse_config
from dualpool.gateway._server import GatewayServer

__all__ = ["GatewayThread"]


class GatewayThread:
    """A GatewayServer on its own event loop (uvloop) in a daemon thread."""

    def __init__(self, config: Mapping[str, Any], *, host: str = "127.0.0.1") -> None:
        import uvloop

        self.config = parse_config(dict(config))
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = GatewayServer(self.config)
        self.gateway = self.call(self.server.start(host=host, port=0))
        self.port: int = self.server.port

    def call(self, coro: Any, timeout: float = 30) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def run(self, fn: Callable[[], Any]) -> Any:
        """Run a plain function on the gateway's loop (to read its state safely)."""

        async def wrap() -> Any:
            return fn()

        return self.call(wrap())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        try:
            self.call(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)

    def __enter__(self) -> GatewayThread:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
