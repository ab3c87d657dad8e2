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

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from dualpool.errors import ConfigError
from dualpool.extproc._processor import ExtProcessor
from dualpool.gateway._config import GatewayConfig
from dualpool.gateway._server import GatewayServer
from dualpool.gateway._telemetry import configure_logging

__all__ = ["ExtProcServer", "run"]

log = logging.getLogger("dualpool.extproc")


class ExtProcServer:
    """The ext_proc gRPC server and the gateway state it routes with."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        grpc_host: str = "127.0.0.1",
        grpc_port: int = 9002,
        endpoint_picker: bool = False,
    ) -> None:
        self.config = config
        self.grpc_host = grpc_host
        self.grpc_port = grpc_port
        self.endpoint_picker = endpoint_picker
        self.http = GatewayServer(config)
        self.processor: ExtProcessor | None = None
        self._grpc: grpc.aio.Server | None = None

    @property
    def http_port(self) -> int:
        return self.http.port

    async def start(self) -> ExtProcessor:
        gw = await self.http.start()
        proc = ExtProcessor(gw, endpoint_picker=self.endpoint_picker)
        self.processor = proc
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", self.config.limits.max_body_bytes + 65536),
                ("grpc.max_send_message_length", self.config.limits.max_body_bytes + 65536),
                # Envoy keeps one HTTP/2 connection open and multiplexes every stream.
                ("grpc.max_concurrent_streams", 4096),
            ]
        )
        pb_grpc.add_ExternalProcessorServicer_to_server(proc, server)
        try:
            self.grpc_port = server.add_insecure_port(f"{self.grpc_host}:{self.grpc_port}")
        except RuntimeError as exc:
            await self.http.stop()
            raise ConfigError(
                "--grpc-port", f"cannot listen on {self.grpc_host}:{self.grpc_port}: {exc}"
            ) from None
        await server.start()
        self._grpc = server
        log.info(
            "ext_proc on %s:%d (endpoint picker %s); metrics on port %d",
            self.grpc_host,
            self.grpc_port,
            "on" if self.endpoint_picker else "off",
            self.http_port,
        )
        return proc

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(self.config.timeouts.drain)
        await self.http.stop()


async def _main(server: ExtProcServer, ready_line: bool) -> int:
    await server.start()
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
    """Serve until SIGTERM/SIGINT, then drain and return 0."""
    configure_logging(server.config.log.level)
    return asyncio.run(_main(server, ready_line))
