"""The ext_proc v3 messages dualpool sends back to Envoy, built in one place.

    headers ─► read_headers (raw_value or value, keys lower case as Envoy sends them)
    answer  ─► continue_*, route (headers + route cache + metadata), body replaced or
               cleared, immediate, more time (override_message_timeout)

Responses that never change (a plain CONTINUE for each phase) are built once and
reused: grpc serialises a message when it is written, and nobody mutates them.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

__all__ = [
    "BUFFERED",
    "CLEAR_REQUEST_BODY",
    "CONTINUE_REQUEST_BODY",
    "CONTINUE_REQUEST_HEADERS",
    "CONTINUE_REQUEST_TRAILERS",
    "CONTINUE_RESPONSE_BODY",
    "CONTINUE_RESPONSE_HEADERS",
    "CONTINUE_RESPONSE_TRAILERS",
    "NONE",
    "STREAMED",
    "constant",
    "immediate",
    "more_time",
    "read_headers",
    "remove_request_headers",
    "request_body_replaced",
    "request_body_response",
    "response_body_replaced",
    "route_headers",
    "route_response",
    "skip_request_body",
    "wire",
]

_Mode = processing_mode_pb2.ProcessingMode
STREAMED: int = _Mode.STREAMED
BUFFERED: int = _Mode.BUFFERED
NONE: int = _Mode.NONE
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

ProcessingResponse = pb.ProcessingResponse

CONTINUE_REQUEST_HEADERS = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
CONTINUE_REQUEST_BODY = pb.ProcessingResponse(request_body=pb.BodyResponse())
CONTINUE_RESPONSE_HEADERS = pb.ProcessingResponse(response_headers=pb.HeadersResponse())
CONTINUE_RESPONSE_BODY = pb.ProcessingResponse(response_body=pb.BodyResponse())
CONTINUE_REQUEST_TRAILERS = pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
CONTINUE_RESPONSE_TRAILERS = pb.ProcessingResponse(response_trailers=pb.TrailersResponse())
# A streamed request body chunk dropped (the replacement went with an earlier one).
CLEAR_REQUEST_BODY = pb.ProcessingResponse(
    request_body=pb.BodyResponse(
        response=pb.CommonResponse(body_mutation=pb.BodyMutation(clear_body=True))
    )
)


# Serialized forms of the messages that never change (the native server writes bytes).
_WIRE: dict[int, bytes] = {}


def constant(resp: Any) -> Any:
    """Mark a response as never changing: `wire` returns its bytes serialized once.
    (Keyed by the object: constants live as long as the module that built them.)"""
    _WIRE[id(resp)] = resp.SerializeToString()
    return resp


def wire(resp: Any) -> bytes:
    """A response serialized (once, for the constants)."""
    data = _WIRE.get(id(resp))
    if data is None:
        data = resp.SerializeToString()
    return data


for _m in (
    CONTINUE_REQUEST_HEADERS,
    CONTINUE_REQUEST_BODY,
    CONTINUE_RESPONSE_HEADERS,
    CONTINUE_RESPONSE_BODY,
    CONTINUE_REQUEST_TRAILERS,
    CONTINUE_RESPONSE_TRAILERS,
    CLEAR_REQUEST_BODY,
):
    constant(_m)


def read_headers(msg: Any, wanted: frozenset[str] | None = None) -> dict[str, bytes]:
    """An HttpHeaders message as {lower-case name: value} (only the `wanted` names, if
    given: the others are not decoded); Envoy sends raw_value."""
    out: dict[str, bytes] = {}
    for h in msg.headers.headers:
        k = h.key
        if wanted is None or k in wanted:
            out[k] = h.raw_value or h.value.encode()
    return out


def _mutation(headers: tuple[tuple[str, bytes], ...], remove: tuple[str, ...] = ()) -> Any:
    return pb.HeaderMutation(
        set_headers=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=k, raw_value=v), append_action=_OVERWRITE
            )
            for k, v in headers
        ],
        remove_headers=list(remove),
    )


def remove_request_headers(remove: tuple[str, ...]) -> Any:
    """Answer to request headers: go on without the named headers (the client's own)."""
    return pb.ProcessingResponse(
        request_headers=pb.HeadersResponse(
            response=pb.CommonResponse(header_mutation=_mutation((), remove))
        )
    )


def skip_request_body(remove: tuple[str, ...] = ()) -> Any:
    """Answer to request headers of a request dualpool does not route: no body wanted."""
    return pb.ProcessingResponse(
        request_headers=pb.HeadersResponse(
            response=pb.CommonResponse(header_mutation=_mutation((), remove))
        ),
        mode_override=_Mode(request_body_mode=NONE, response_header_mode=_Mode.SKIP),
    )


def request_body_response(
    headers: tuple[tuple[str, bytes], ...],
    body: bytes | None,
    metadata: dict[str, dict[str, str]] | None = None,
) -> Any:
    """Route the buffered request: set the routing headers, clear the route cache,
    and replace the body when it changed (with its new content-length)."""
    common = pb.CommonResponse(clear_route_cache=True)
    if body is not None:
        headers = (*headers, ("content-length", str(len(body)).encode()))
        common.body_mutation.body = body
    common.header_mutation.CopyFrom(_mutation(headers))
    resp = pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))
    if metadata:
        s = struct_pb2.Struct()
        s.update(metadata)
        resp.dynamic_metadata.CopyFrom(s)
    return resp


def route_headers(headers: tuple[tuple[str, bytes], ...], remove: tuple[str, ...] = ()) -> Any:
    """Answer to held request headers: set the routing headers, clear the route cache.

    Built once per pool; `route_response` wraps it with the per-request metadata."""
    return pb.HeadersResponse(
        response=pb.CommonResponse(
            header_mutation=_mutation(headers, remove), clear_route_cache=True
        )
    )


def route_response(headers_response: Any, metadata: dict[str, dict[str, str]]) -> Any:
    """The request headers' answer (pipelined mode): route, and tag the request with
    dynamic metadata (its id for the usage observer; the endpoint picker's pick)."""
    resp = pb.ProcessingResponse(request_headers=headers_response)
    fields = resp.dynamic_metadata.fields
    for ns, values in metadata.items():
        inner = fields[ns].struct_value.fields
        for k, v in values.items():
            inner[k].string_value = v
    return resp


def request_body_replaced(body: bytes) -> Any:
    """A streamed request body chunk replaced (by the whole new body)."""
    return pb.ProcessingResponse(
        request_body=pb.BodyResponse(
            response=pb.CommonResponse(body_mutation=pb.BodyMutation(body=body))
        )
    )


def more_time(seconds: float) -> Any:
    """Ask Envoy to wait longer for the answer in progress (a body still uploading)."""
    resp = pb.ProcessingResponse()
    resp.override_message_timeout.FromMilliseconds(int(seconds * 1000))
    return resp


def response_body_replaced(body: bytes) -> Any:
    """A streamed answer's chunk replaced (the injected usage event removed)."""
    mutation = pb.BodyMutation(body=body) if body else pb.BodyMutation(clear_body=True)
    return pb.ProcessingResponse(
        response_body=pb.BodyResponse(response=pb.CommonResponse(body_mutation=mutation))
    )


def immediate(
    status: int, body: bytes, details: str, headers: tuple[tuple[str, bytes], ...] = ()
) -> Any:
    """Answer the client from Envoy without calling a backend (JSON body)."""
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=_mutation((("content-type", b"application/json"), *headers)),
            body=body,
            details=details,
        )
    )
