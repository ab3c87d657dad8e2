"""One HTTP/1.1 layer for every face: the server and the upstream client.

Server (the gateway, the emulator, the test fakes and the benchmark backend):

    class App:
        def handle(self, request: Request, exchange: Exchange) -> Awaitable[None] | None:
            exchange.send(200, b'{"ok": true}')        # or start_stream/write/end
        def error_body(self, status: int, message: str) -> bytes: ...

    server = HttpServer(App(), ServerLimits(idle_timeout=5.0), server_name=b"me")
    port = await server.listen("127.0.0.1", 0)

Client (the gateway's upstream, probes, tests, load generators):

    pool = ConnectionPool("127.0.0.1", port)
    resp = await pool.request("POST", "/v1/completions", body=..., on_chunk=...)
    async with pool.stream("POST", "/v1/completions", body=...) as resp:
        async for data, t in resp: ...
    status, body = await fetch("127.0.0.1", port, "/health", timeout=2.0)

Errors are types (`UpstreamError` and its subclasses), never strings to match.
"""

from dualpool.http._client import (
    Connection,
    ConnectionPool,
    Response,
    Sink,
    fetch,
    format_request,
)
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
from dualpool.http._exchange import Exchange, Handler, Request
from dualpool.http._jsonbody import BadJson, parse_json_body
from dualpool.http._listener import HttpServer
from dualpool.http._server import HttpConnection
from dualpool.http._stream import StreamingResponse
from dualpool.http._wire import ServerLimits, date_header, status_line

__all__ = [
    "BadJson",
    "ClosedBeforeResponse",
    "ClosedMidResponse",
    "ConnectError",
    "ConnectTimeout",
    "Connection",
    "ConnectionPool",
    "Exchange",
    "Handler",
    "HttpConnection",
    "HttpServer",
    "NotSent",
    "ProtocolError",
    "Request",
    "Response",
    "ResponseTooLarge",
    "ServerLimits",
    "Sink",
    "StreamingResponse",
    "UpstreamError",
    "UpstreamTimeout",
    "date_header",
    "fetch",
    "format_request",
    "parse_json_body",
    "status_line",
]
