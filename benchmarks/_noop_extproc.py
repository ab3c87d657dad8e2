"""A do-nothing ext_proc server: what a Python processor alone costs inside Envoy.

    python benchmarks/_noop_extproc.py --port P [--transport grpcio|native]

Exchanges the same messages with Envoy as `dualpool extproc` under
deploy/envoy/envoy.yaml: holds the request headers until the body is in, then
answers them (the routing header, clearing the route cache) and every body chunk
with CONTINUE; reads nothing of what the observer filter sends. The difference
between the two is dualpool's own work. No routing, no JSON, no metrics. Not a
product; benchmarks/extproc_overhead.py runs it.

`--transport grpcio`: on grpc.aio (the gRPC library's cost). `--transport native`:
on dualpool's own HTTP/2 server (`dualpool.extproc._h2`, the one `dualpool extproc
--transport native` uses, on uvloop), every answer prebuilt as bytes: the floor of
Envoy's ext_proc machinery plus one round trip to a Python process.
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


class _Stream:
    __slots__ = ("chunks", "complete", "held", "observe", "started")

    def __init__(self) -> None:
        self.started = False
        self.observe = False
        self.held = False
        self.chunks = 0
        self.complete = False


_ROUTE_WIRE = _ROUTE.SerializeToString()
_CONTINUE_WIRE = {k: v.SerializeToString() for k, v in _CONTINUE.items()}
_BODY_WIRE = _CONTINUE_WIRE["request_body"]
_NOTHING: tuple[bytes, ...] = ()


class NativeNoop:
    """The same exchange on the native HTTP/2 server (`H2Connection`'s processor):
    one parse per message (upb), answers prebuilt."""

    def open(self) -> _Stream:
        return _Stream()

    def close(self, st: _Stream) -> None:
        pass

    def answer(self, st: _Stream, message: bytes) -> tuple[bytes, ...]:
        req = pb.ProcessingRequest.FromString(message)
        kind = req.WhichOneof("request")
        if not st.started:
            st.started = True
            st.observe = req.observability_mode
        if st.observe:
            if kind == "response_body":
                st.complete = req.response_body.end_of_stream
            elif kind == "response_headers":
                st.complete = req.response_headers.end_of_stream
            return _NOTHING
        if kind == "request_headers" and not req.request_headers.end_of_stream:
            st.held = True
            return _NOTHING
        if kind == "request_body" and st.held:
            st.chunks += 1
            if not req.request_body.end_of_stream:
                return _NOTHING
            st.held = False
            st.complete = True
            return (_ROUTE_WIRE, *(_BODY_WIRE,) * st.chunks)
        if kind == "request_headers":
            st.complete = True
        return (_CONTINUE_WIRE.get(kind or "", _CONTINUE_WIRE["response_body"]),)


async def main_native(port: int) -> None:
    from dualpool.extproc._h2 import serve_h2

    server, _ = await serve_h2(NativeNoop(), "127.0.0.1", port)
    await server.serve_forever()


async def main(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(Noop(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--transport", choices=("grpcio", "native"), default="grpcio")
    args = ap.parse_args()
    if args.transport == "native":
        import uvloop

        uvloop.run(main_native(args.port))
    else:
        asyncio.run(main(args.port))
