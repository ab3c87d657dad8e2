"""The ext_proc v3 messages dualpool sends back to Envoy, built in one place, as bytes.

    headers ─► read_headers (raw_value or value, keys lower case as Envoy sends them)
    answer  ─► continue_*, route (headers + route cache + metadata), body replaced or
               cleared, immediate, more time (override_message_timeout)

Every answer is a serialized ProcessingResponse: both gRPC servers write bytes (the
native one frames them itself, grpcio passes them through), so an answer that never
changes (a CONTINUE for each phase) is serialized once, and the route's answer is,
per pool, a prebuilt prefix plus the request's metadata encoded by hand
(`route_response`: a protobuf message is the concatenation of its fields, in any
order, so the two parts make one message).
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2

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
    "find_headers",
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
]

_Mode = processing_mode_pb2.ProcessingMode
STREAMED: int = _Mode.STREAMED
BUFFERED: int = _Mode.BUFFERED
NONE: int = _Mode.NONE
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def _ser(resp: Any) -> bytes:
    data: bytes = resp.SerializeToString()
    return data


CONTINUE_REQUEST_HEADERS: bytes = _ser(pb.ProcessingResponse(request_headers=pb.HeadersResponse()))
CONTINUE_REQUEST_BODY: bytes = _ser(pb.ProcessingResponse(request_body=pb.BodyResponse()))
CONTINUE_RESPONSE_HEADERS: bytes = _ser(
    pb.ProcessingResponse(response_headers=pb.HeadersResponse())
)
CONTINUE_RESPONSE_BODY: bytes = _ser(pb.ProcessingResponse(response_body=pb.BodyResponse()))
CONTINUE_REQUEST_TRAILERS: bytes = _ser(
    pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
)
CONTINUE_RESPONSE_TRAILERS: bytes = _ser(
    pb.ProcessingResponse(response_trailers=pb.TrailersResponse())
)
# A streamed request body chunk dropped (the replacement went with an earlier one).
CLEAR_REQUEST_BODY: bytes = _ser(
    pb.ProcessingResponse(
        request_body=pb.BodyResponse(
            response=pb.CommonResponse(body_mutation=pb.BodyMutation(clear_body=True))
        )
    )
)


def read_headers(msg: Any, wanted: frozenset[str] | None = None) -> dict[str, bytes]:
    """An HttpHeaders message as {lower-case name: value} (only the `wanted` names, if
    given: the others are not decoded); Envoy sends raw_value."""
    out: dict[str, bytes] = {}
    for h in msg.headers.headers:
        k = h.key
        if wanted is None or k in wanted:
            out[k] = h.raw_value or h.value.encode()
    return out


def find_headers(raw: bytes, wanted: frozenset[str]) -> dict[str, bytes] | None:
    """`read_headers` on a serialized ProcessingRequest, for the `wanted` names only,
    without decoding the rest: each is found by its encoding (a HeaderValue's key = 1
    then raw_value = 3, b"\\n" len name b"\\x1a" len value). A header value cannot hold
    b"\\n" (Envoy rejects it), so the pattern is only ever a header's key. None when a
    name is there in another form (`value` instead of `raw_value`): decode it then."""
    out: dict[str, bytes] = {}
    for name in wanted:
        key = _KEYS.get(name)
        if key is None:
            key = _KEYS[name] = _field(b"\x0a", name.encode())
        i = raw.find(key)
        if i < 0:
            continue
        i += len(key)
        if raw[i : i + 1] != b"\x1a":
            return None
        n = raw[i + 1]
        i += 2
        if n >= 0x80:  # a multi-byte length
            n &= 0x7F
            shift = 7
            while True:
                b = raw[i]
                i += 1
                n |= (b & 0x7F) << shift
                if b < 0x80:
                    break
                shift += 7
        out[name] = raw[i : i + n]
    return out


_KEYS: dict[str, bytes] = {}


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


def remove_request_headers(remove: tuple[str, ...]) -> bytes:
    """Answer to request headers: go on without the named headers (the client's own)."""
    return _ser(
        pb.ProcessingResponse(
            request_headers=pb.HeadersResponse(
                response=pb.CommonResponse(header_mutation=_mutation((), remove))
            )
        )
    )


def skip_request_body(remove: tuple[str, ...] = ()) -> bytes:
    """Answer to request headers of a request dualpool does not route: no body wanted."""
    return _ser(
        pb.ProcessingResponse(
            request_headers=pb.HeadersResponse(
                response=pb.CommonResponse(header_mutation=_mutation((), remove))
            ),
            mode_override=_Mode(request_body_mode=NONE, response_header_mode=_Mode.SKIP),
        )
    )


def request_body_response(
    headers: tuple[tuple[str, bytes], ...],
    body: bytes | None,
    metadata: dict[str, dict[str, str]] | None = None,
) -> bytes:
    """Route the buffered request: set the routing headers, clear the route cache,
    and replace the body when it changed (with its new content-length)."""
    common = pb.CommonResponse(clear_route_cache=True)
    if body is not None:
        headers = (*headers, ("content-length", str(len(body)).encode()))
        common.body_mutation.body = body
    common.header_mutation.CopyFrom(_mutation(headers))
    resp = pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))
    return _ser(resp) + (_metadata(metadata) if metadata else b"")


def route_headers(headers: tuple[tuple[str, bytes], ...], remove: tuple[str, ...] = ()) -> bytes:
    """The held request headers' answer without its metadata: set the routing headers,
    clear the route cache. Built once per pool; `route_response` adds the metadata."""
    return _ser(
        pb.ProcessingResponse(
            request_headers=pb.HeadersResponse(
                response=pb.CommonResponse(
                    header_mutation=_mutation(headers, remove), clear_route_cache=True
                )
            )
        )
    )


def route_response(headers_response: bytes, metadata: dict[str, dict[str, str]]) -> bytes:
    """The request headers' answer (pipelined mode): route, and tag the request with
    dynamic metadata (its id for the usage observer; the endpoint picker's pick)."""
    if len(metadata) == 1:
        ((ns, values),) = metadata.items()
        if len(values) == 1:
            ((key, value),) = values.items()
            return headers_response + _one(ns, key, value.encode())
    return headers_response + _metadata(metadata)


_ONE: dict[tuple[str, str, int], bytes] = {}


def _one(ns: str, key: str, value: bytes) -> bytes:
    """`_metadata({ns: {key: value}})`, the usual case (the request's id): what comes
    before the value depends only on the value's length, encoded once per length."""
    n = len(value)
    prefix = _ONE.get((ns, key, n))
    if prefix is None:
        whole = _metadata({ns: {key: "\0" * n}})
        prefix = _ONE[(ns, key, n)] = whole[: len(whole) - n]
    return prefix + value


_BYTE = [bytes((i,)) for i in range(0x80)]


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _BYTE[n]
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, the payload's length, the payload."""
    return tag + _varint(len(payload)) + payload


def _metadata(metadata: dict[str, dict[str, str]]) -> bytes:
    """ProcessingResponse.dynamic_metadata (field 8, a google.protobuf.Struct) holding
    {namespace: {key: string}}, encoded by hand: Struct.fields = 1 (a map: entry key = 1,
    value = 2), Value.string_value = 3, Value.struct_value = 5."""
    outer = b""
    for ns, values in metadata.items():
        inner = b""
        for k, v in values.items():
            entry = _field(b"\x0a", k.encode()) + _field(b"\x12", _field(b"\x1a", v.encode()))
            inner += _field(b"\x0a", entry)
        entry = _field(b"\x0a", ns.encode()) + _field(b"\x12", _field(b"\x2a", inner))
        outer += _field(b"\x0a", entry)
    return _field(b"\x42", outer)


def request_body_replaced(body: bytes) -> bytes:
    """A streamed request body chunk replaced (by the whole new body)."""
    return _ser(
        pb.ProcessingResponse(
            request_body=pb.BodyResponse(
                response=pb.CommonResponse(body_mutation=pb.BodyMutation(body=body))
            )
        )
    )


def more_time(seconds: float) -> bytes:
    """Ask Envoy to wait longer for the answer in progress (a body still uploading)."""
    resp = pb.ProcessingResponse()
    resp.override_message_timeout.FromMilliseconds(int(seconds * 1000))
    return _ser(resp)


def response_body_replaced(body: bytes) -> bytes:
    """A streamed answer's chunk replaced (the injected usage event removed)."""
    mutation = pb.BodyMutation(body=body) if body else pb.BodyMutation(clear_body=True)
    return _ser(
        pb.ProcessingResponse(
            response_body=pb.BodyResponse(response=pb.CommonResponse(body_mutation=mutation))
        )
    )


def immediate(
    status: int, body: bytes, details: str, headers: tuple[tuple[str, bytes], ...] = ()
) -> bytes:
    """Answer the client from Envoy without calling a backend (JSON body)."""
    return _ser(
        pb.ProcessingResponse(
            immediate_response=pb.ImmediateResponse(
                status=http_status_pb2.HttpStatus(code=status),
                headers=_mutation((("content-type", b"application/json"), *headers)),
                body=body,
                details=details,
            )
        )
    )
