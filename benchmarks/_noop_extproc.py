"""A do-nothing ext_proc server: what the Python gRPC stack alone costs inside Envoy.

    python benchmarks/_noop_extproc.py --port P

Exchanges the same messages with Envoy as `dualpool extproc` under
deploy/envoy/envoy.yaml: holds the request headers until the body is in, then
answers them (the routing header, clearing the route cache) and every body chunk
with CONTINUE; reads nothing of what the observer filter sends. The difference
between the two is dualpool's own work. No routing, no JSON, no metrics. Not a
product; benchmarks/extproc_overhead.py runs it.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

_ROUTE = pb.ProcessingResponse(
    request_headers=pb.HeadersResponse(
        response=pb.CommonResponse(
            header_mutation=pb.HeaderMutation(
                set_headers=[
                    base_pb2.HeaderValueOption(
                        header=base_pb2.HeaderValue(key="x-dualpool-pool", raw_value=b"short"),
                        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                    )
                ]
            ),
            clear_route_cache=True,
        )
    )
)
_CONTINUE = {
    "request_headers": pb.ProcessingResponse(request_headers=pb.HeadersResponse()),
    "request_body": pb.ProcessingResponse(request_body=pb.BodyResponse()),
    "response_headers": pb.ProcessingResponse(response_headers=pb.HeadersResponse()),
    "response_body": pb.ProcessingResponse(response_body=pb.BodyResponse()),
}


class Noop(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    async def Process(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        held = False
        chunks = 0
        async for req in requests:
            if req.observability_mode:
                continue
            kind = req.WhichOneof("request")
            if kind == "request_headers" and not req.request_headers.end_of_stream:
                held = True
            elif kind == "request_body" and held:
                chunks += 1
                if req.request_body.end_of_stream:
                    held = False
                    yield _ROUTE
                    for _ in range(chunks):
                        yield _CONTINUE["request_body"]
            else:
                yield _CONTINUE.get(kind, _CONTINUE["response_body"])


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
