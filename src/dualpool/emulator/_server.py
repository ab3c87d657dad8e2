"""`EmulatorServer`: N emulated instances of one config in one process.

    async with EmulatorServer(EmulatorConfig(model="llama-3.1-8b", port=0,
                                             instances=2, speedup=20)) as srv:
        srv.urls          # ["http://127.0.0.1:41877", "http://127.0.0.1:39121"]

Everything that can fail at start-up (an unknown model or GPU, an infeasible
engine config, a tokenizer that is not installed) fails in the constructor,
before any socket is opened, as vLLM refuses to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from types import TracebackType

from dualpool.emulator._config import EmulatorConfig
from dualpool.emulator._instance import EmulatedInstance
from dualpool.emulator._openai import Filler
from dualpool.http import HttpServer, ServerLimits
from dualpool.tokenizers import load_tokenizer

__all__ = ["EMULATOR_LIMITS", "EmulatorServer", "serve"]

# vLLM's HTTP server (uvicorn) closes an idle keep-alive connection after 5 s; the
# gateway's stale-connection retry is exercised against the emulator because of it.
EMULATOR_LIMITS = ServerLimits(idle_timeout=5.0, max_body_bytes=64 << 20)


class EmulatorServer:
    """Emulated instances on consecutive ports (or ephemeral ones with port 0)."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        tokenizer = load_tokenizer(config.tokenizer)
        filler = Filler(tokenizer)
        self.instances = [
            EmulatedInstance(config, i, tokenizer, filler) for i in range(config.instances)
        ]
        self._servers: list[HttpServer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.ports: list[int] = []

    @property
    def urls(self) -> list[str]:
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return [f"http://{host}:{p}" for p in self.ports]

    async def start(self) -> list[int]:
        """Open every port and start every engine loop; the ports, in instance order."""
        loop = asyncio.get_running_loop()
        try:
            for inst in self.instances:
                port = self.config.port + inst.index if self.config.port else 0
                server = HttpServer(
                    inst, EMULATOR_LIMITS, server_name=b"uvicorn", loop=loop, eof_aborts=True
                )
                self._servers.append(server)
                self.ports.append(await server.listen(self.config.host, port))
        except OSError:
            await self._close_servers()
            raise
        for inst in self.instances:
            inst.start_clock(loop)
            self._tasks.append(loop.create_task(inst.run(), name=f"engine-{inst.index}"))
        return self.ports

    async def _close_servers(self) -> None:
        for s in self._servers:
            s.close()
        for s in self._servers:
            await s.wait_closed()

    async def stop(self, grace: float = 5.0) -> int:
        """Stop accepting; let in-flight requests finish for up to `grace` wall
        seconds, then cancel the rest (streams get `data: [DONE]`, others a 503).
        Returns how many requests were cancelled."""
        for inst in self.instances:
            inst.accepting = False
        for s in self._servers:
            s.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while loop.time() < deadline and any(i.num_in_flight for i in self.instances):
            await asyncio.sleep(0.01)
        cancelled = sum(i.abort_all("The server is shutting down.") for i in self.instances)
        for srv in self._servers:
            srv.close_all()
            await srv.wait_closed()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        # Let the transports flush and close before the loop goes away.
        await asyncio.sleep(0)
        return cancelled

    async def __aenter__(self) -> EmulatorServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop(grace=0.0)


async def serve(
    config: EmulatorConfig,
    *,
    grace: float = 5.0,
    on_ready: Callable[[EmulatorServer], None] | None = None,
    server: EmulatorServer | None = None,
) -> int:
    """Run until SIGTERM or SIGINT, then shut down cleanly; returns requests cancelled."""
    srv = server or EmulatorServer(config)
    await srv.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if on_ready is not None:
        on_ready(srv)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    return await srv.stop(grace)
