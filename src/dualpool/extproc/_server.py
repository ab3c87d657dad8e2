"""Start, run and stop `dualpool extproc`: the gRPC processor and its side HTTP port.

start():  GatewayServer.start() ─► discovery, Router, pools, snapshot restore, health
          probes and vLLM metrics scrapes, the side HTTP port (/metrics, /health,
          /ready, /admin) ─► ExtProcessor on a grpc.aio server, same event loop
stop():   grpc stops accepting, open streams finish (timeouts.drain) ─► the
          gateway's stop (saves the calibrator snapshot)

Everything but the gRPC face is the gateway's own code, started the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from dualpool.errors import ConfigError
from dualpool.extproc._h2 import H2Connection, serve_h2
from dualpool.extproc._processor import ExtProcessor
from dualpool.gateway._config import GatewayConfig
from dualpool.gateway._server import GatewayServer, settle_heap
from dualpool.gateway._telemetry import configure_logging

__all__ = ["TRANSPORTS", "ExtProcServer", "run"]

# grpcio: the gRPC library; native: dualpool's own HTTP/2 server for this one method
# (_h2.py), the same messages at a fraction of the CPU.
TRANSPORTS = ("grpcio", "native")

log = logging.getLogger("dualpool.extproc")

_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"


def grpc_method(
    proc: ExtProcessor,
) -> Callable[[AsyncIterator[bytes], Any], AsyncIterator[bytes]]:
    """The processor's one method for grpc.aio: serialized requests in, serialized
    answers out (here, not in _processor.py: an async generator, which mypyc does not
    compile)."""

    async def process(request_iterator: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        st = proc.open()
        try:
            async for message in request_iterator:
                for data in proc.answer(st, message):
                    yield data
                if st.complete:
                    return
        finally:
            proc.close(st)

    return process


def grpc_handler(proc: ExtProcessor) -> grpc.GenericRpcHandler:
    """`grpc_method` on grpc.aio's server, registered without (de)serializers."""
    method = grpc.stream_stream_rpc_method_handler(grpc_method(proc))
    return grpc.method_handlers_generic_handler(_SERVICE, {"Process": method})


class ExtProcServer:
    """The ext_proc gRPC server and the gateway state it routes with."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        grpc_host: str = "127.0.0.1",
        grpc_port: int = 9002,
        endpoint_picker: bool = False,
        transport: str = "grpcio",
    ) -> None:
        if transport not in TRANSPORTS:
            raise ConfigError("--transport", f"must be one of {', '.join(TRANSPORTS)}")
        self.transport = transport
        self.config = config
        self.grpc_host = grpc_host
        self.grpc_port = grpc_port
        self.endpoint_picker = endpoint_picker
        self.http = GatewayServer(config)
        self.processor: ExtProcessor | None = None
        self._grpc: grpc.aio.Server | None = None
        self._h2: asyncio.Server | None = None
        self._h2_conns: set[H2Connection] = set()

    @property
    def http_port(self) -> int:
        return self.http.port

    async def start(self) -> ExtProcessor:
        gw = await self.http.start()
        proc = ExtProcessor(gw, endpoint_picker=self.endpoint_picker)
        self.processor = proc
        if self.transport == "native":
            try:
                self._h2, self._h2_conns = await serve_h2(proc, self.grpc_host, self.grpc_port)
            except OSError as exc:
                await self.http.stop()
                raise ConfigError(
                    "--grpc-port", f"cannot listen on {self.grpc_host}:{self.grpc_port}: {exc}"
                ) from None
            self.grpc_port = self._h2.sockets[0].getsockname()[1]
            self._started(proc)
            return proc
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", self.config.limits.max_body_bytes + 65536),
                ("grpc.max_send_message_length", self.config.limits.max_body_bytes + 65536),
                # Envoy keeps one HTTP/2 connection open and multiplexes every stream.
                ("grpc.max_concurrent_streams", 4096),
            ]
        )
        server.add_generic_rpc_handlers((grpc_handler(proc),))
        try:
            self.grpc_port = server.add_insecure_port(f"{self.grpc_host}:{self.grpc_port}")
        except RuntimeError as exc:
            await self.http.stop()
            raise ConfigError(
                "--grpc-port", f"cannot listen on {self.grpc_host}:{self.grpc_port}: {exc}"
            ) from None
        await server.start()
        self._grpc = server
        self._started(proc)
        return proc

    def _started(self, proc: ExtProcessor) -> None:
        log.info(
            "ext_proc (%s) on %s:%d (endpoint picker %s); metrics on port %d",
            self.transport,
            self.grpc_host,
            self.grpc_port,
            "on" if proc.endpoint_picker else "off",
            self.http_port,
        )

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(self.config.timeouts.drain)
        if self._h2 is not None:
            self._h2.close()
            for conn in list(self._h2_conns):
                conn.shutdown()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.config.timeouts.drain
            while any(c.streams for c in self._h2_conns) and loop.time() < deadline:
                await asyncio.sleep(0.02)
            for conn in list(self._h2_conns):
                conn.close()
        if self.processor is not None:
            self.processor.flush()  # the observer's last usage, before the snapshot
        await self.http.stop()


async def _main(server: ExtProcServer, ready_line: bool) -> int:
    await server.start()
    settle_heap()  # as `dualpool serve` does: no 4-9 ms full collections of start-up state
    if ready_line:
        # One JSON line for whoever started us (tests, scripts): where we listen.
        sys.stdout.write(
            json.dumps({"grpc_port": server.grpc_port, "http_port": server.http_port}) + "\n"
        )
        sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received: draining (up to %gs)", server.config.timeouts.drain)
    await server.stop()
    return 0


def run(server: ExtProcServer, *, ready_line: bool = False) -> int:
    """Serve until SIGTERM/SIGINT, then drain and return 0.

    The native transport runs on uvloop (as the gateway does); grpcio's asyncio
    server on the standard event loop, the one grpc.aio supports.
    """
    configure_logging(server.config.log.level)
    if server.transport == "native":
        try:
            import uvloop
        except ImportError:  # pragma: no cover
            pass
        else:
            return uvloop.run(_main(server, ready_line))
    return asyncio.run(_main(server, ready_line))
