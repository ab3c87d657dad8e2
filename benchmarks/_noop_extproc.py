"""A do-nothing ext_proc server: what the Python gRPC stack alone costs inside Envoy.

    python benchmarks/_noop_extproc.py --port P

Answers every message of every stream with CONTINUE, and chooses the answer's
body mode from its headers the way `dualpool extproc` does (STREAMED for SSE,
BUFFERED for JSON), so Envoy exchanges the same messages with it as with
dualpool: the difference between the two is dualpool's own work. No routing,
no JSON, no metrics. Not a product; benchmarks/extproc_overhead.py runs it.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as pm
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

_Mode = pm.ProcessingMode
_ANSWERS = {
    "request_headers": pb.ProcessingResponse(request_headers=pb.HeadersResponse()),
    "request_body": pb.ProcessingResponse(request_body=pb.BodyResponse()),
    "response_body": pb.ProcessingResponse(response_body=pb.BodyResponse()),
}
_SSE = pb.ProcessingResponse(
    response_headers=pb.HeadersResponse(), mode_override=_Mode(response_body_mode=_Mode.STREAMED)
)
_JSON = pb.ProcessingResponse(
    response_headers=pb.HeadersResponse(), mode_override=_Mode(response_body_mode=_Mode.BUFFERED)
)


class Noop(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    async def Process(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for req in requests:
            kind = req.WhichOneof("request")
            if kind == "response_headers":
                sse = any(
                    h.key == "content-type" and h.raw_value.startswith(b"text/event-stream")
                    for h in req.response_headers.headers.headers
                )
                yield _SSE if sse else _JSON
            else:
                yield _ANSWERS.get(kind, _ANSWERS["response_body"])


async def main(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(Noop(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    asyncio.run(main(ap.parse_args().port))
