"""dualpool's routing inside Envoy: the ext_proc v3 ExternalProcessor service.

deploy/envoy/envoy.yaml runs three ext_proc filters against this one service; each
gRPC stream is one HTTP request seen by one filter, told apart by its first message:

    route (request headers, body STREAMED, send_body_without_waiting_for_header_response):
      headers ─► held (not answered yet)          ─┐ Envoy sends both at once: ONE
      body    ─► Router.route(body, saturated)     ─┘ round trip per request
                 │ malformed ─► ImmediateResponse 400 (OpenAI error)
                 │ too long  ─► ImmediateResponse 400 (vLLM's words), no backend called
                 ▼
                 headers' answer: x-dualpool-pool (the route table picks the cluster),
                 clear_route_cache, dynamic metadata dualpool.id (and, endpoint picker,
                 x-gateway-destination-endpoint + envoy.lb); a stream without
                 include_usage: body replaced with it, x-dualpool-strip-usage set
    strip   (only on routes with x-dualpool-strip-usage; response body STREAMED):
                 SseRelay removes the usage event we asked for
    observe (observability_mode: Envoy never waits for it):
                 request headers ─► claims the request by its dualpool.id
                 response headers/body ─► usage (SSE or JSON), misroutes
                 ─► record_feedback (calibrator + metrics); stream end ─► accounted

A route stream whose first message says BUFFERED (no pipelining) is answered the
classic way: headers at once, the routing in the body's answer.

Pools, backends, health, scraped load, metrics and the calibrator are the
gateway's own objects (a `Gateway` built by `GatewayServer`): one implementation
of the decision for both faces, and one calibrator when both run in one process.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from dualpool.errors import RequestError
from dualpool.extproc import _messages as msg
from dualpool.gateway._backends import Backend, Pool
from dualpool.gateway._errors import error_body
from dualpool.gateway._feedback import record_feedback
from dualpool.gateway._gateway import Gateway
from dualpool.gateway._models import Served
from dualpool.gateway._sse import SseRelay, ask_for_usage, usage_from_body
from dualpool.gateway._telemetry import ACCESS_LOG, Outcome, access_line
from dualpool.http import BadJson, parse_json_body
from dualpool.router import RoutedRequest

__all__ = [
    "DESTINATION_HEADER",
    "LB_NAMESPACE",
    "META_NAMESPACE",
    "OBSERVE",
    "POOL_HEADER",
    "ROUTE",
    "STRIP",
    "STRIP_HEADER",
    "ExtProcessor",
]

log = logging.getLogger("dualpool.extproc")

# The header Envoy's route table matches to choose the pool's cluster (and the one
# the gateway puts on its answers).
POOL_HEADER = "x-dualpool-pool"
# Gateway API Inference Extension, endpoint picker protocol (docs/proposals/
# 004-endpoint-picker-protocol): the chosen endpoint(s) as `ip:port[,ip:port...]`,
# in this request header and in dynamic metadata under the namespace `envoy.lb`.
DESTINATION_HEADER = "x-gateway-destination-endpoint"
LB_NAMESPACE = "envoy.lb"
# Set on streamed requests we asked usage for: their route enables the strip filter.
STRIP_HEADER = "x-dualpool-strip-usage"
# Dynamic metadata namespace: the request's id, forwarded to the observer filter.
META_NAMESPACE = "dualpool"
# A routed request no observer stream claimed in this long is released (seconds).
_CLAIM_TIMEOUT = 10.0
# A request's accounting (usage, calibrator, metrics) runs when the observer claims the
# next request (sent upstream then: Envoy waits for a backend), or this long after its
# answer ended at the latest, in batches: Envoy does not wait for the observer, so the
# answer it is still forwarding (maybe on the same core) should not wait for that work
# either (seconds). The request's slots in its pool and backend are given back at once.
_OBSERVE_DELAY = 0.002
# A body still uploading while its headers are held: Envoy may wait this much longer
# for their answer (bounded by the filter's max_message_timeout).
_UPLOAD_SECONDS = 30.0
# Endpoints named after the first one (tried in order when Envoy retries).
_FALLBACK_ENDPOINTS = 2

_ROUTED = {b"/v1/chat/completions": True, b"/v1/completions": False}
_REMOVE_CLIENT_HEADERS = (POOL_HEADER, DESTINATION_HEADER, STRIP_HEADER)
# The headers each phase reads (the rest are not decoded).
_REQUEST_HEADERS = frozenset((":path", ":method", "content-length", *_REMOVE_CLIENT_HEADERS))
_RESPONSE_HEADERS = frozenset((":status", "content-type"))


class _Exchange:
    """One HTTP request, from its routing (the route stream) to the end of its answer
    (the observer stream)."""

    __slots__ = (
        "answer",
        "backend",
        "body",
        "chat",
        "done",
        "endpoints",
        "finished",
        "id",
        "outcome",
        "path",
        "payload",
        "pool",
        "relay",
        "routed",
        "served",
        "status",
        "stream",
        "strip",
        "t_end",
        "t_first",
        "t_sent",
        "t_start",
        "usage",
    )

    def __init__(self, path: bytes) -> None:
        self.path = path
        self.chat: bool | None = None
        self.routed: RoutedRequest | None = None
        self.served: Served | None = None
        self.pool: Pool | None = None
        self.backend: Backend | None = None
        self.endpoints = ""
        self.id = ""
        self.payload: bytes | None = None
        self.stream = False
        self.strip = False
        self.status = 0
        self.relay: SseRelay | None = None
        self.body: list[bytes] | None = None
        # A non-streamed answer's body, read when the request is accounted.
        self.answer = b""
        self.usage: dict[str, Any] | None = None
        # The answer was seen to its end (or its body was not needed).
        self.done = False
        # Accounted for (metrics, feedback, counters released).
        self.finished = False
        # Set when the processor answered itself (rejected, bad request).
        self.outcome = ""
        self.t_start = time.monotonic()
        self.t_sent = 0.0
        self.t_first = 0.0
        self.t_end = 0.0


# What a gRPC stream is for, known from its first message (one filter each).
_NEW, ROUTE, STRIP, OBSERVE = range(4)


class _Stream:
    """One ext_proc gRPC stream: one HTTP request as seen by one of the three filters."""

    __slots__ = (
        "answered",
        "chunks",
        "complete",
        "ex",
        "expect",
        "looked",
        "more_time",
        "pipelined",
        "relay",
        "remove",
        "role",
        "size",
    )

    def __init__(self) -> None:
        self.role = _NEW
        self.ex: _Exchange | None = None
        # Route: Envoy sends the body without waiting for the headers' answer.
        self.pipelined = False
        self.chunks: list[bytes] = []
        self.size = 0
        self.expect = -1  # content-length, -1 when none
        self.answered = False
        # Nothing more to answer on this stream: the server may end it (its trailers go
        # out with the last answer, which spares a write when Envoy closes it later).
        self.complete = False
        self.more_time = False
        self.remove: tuple[str, ...] = ()
        # Strip: the relay that removes the injected usage event.
        self.relay: SseRelay | None = None
        # Observe: the request id was looked up.
        self.looked = False


_CONTINUE_REQUEST_BODY = (msg.CONTINUE_REQUEST_BODY,)
_CONTINUE_RESPONSE_HEADERS = (msg.CONTINUE_RESPONSE_HEADERS,)
_CONTINUE_RESPONSE_BODY = (msg.CONTINUE_RESPONSE_BODY,)
_SKIP_REQUEST_BODY = (msg.skip_request_body(),)
_NOTHING: tuple[bytes, ...] = ()
_MORE_TIME = msg.more_time(_UPLOAD_SECONDS)
_parse = pb.ProcessingRequest.FromString


class ExtProcessor:
    """envoy.service.ext_proc.v3.ExternalProcessor over the gateway's router and pools.

    Serialized messages in and out (`answer`), for both gRPC servers: the native one
    frames them itself, grpcio is registered without (de)serializers
    (`_server.grpc_handler`)."""

    def __init__(self, gateway: Gateway, *, endpoint_picker: bool = False) -> None:
        self.gw = gateway
        self.metrics = gateway.metrics
        self.endpoint_picker = endpoint_picker
        self.max_body = gateway.config.limits.max_body_bytes
        # Open gRPC streams.
        self.inflight = 0
        self._access_level = logging.getLevelName(gateway.config.log.access.upper())
        m = self.metrics
        # Routed requests waiting for their observer stream, oldest first.
        self._unclaimed: dict[str, _Exchange] = {}
        self._ids = itertools.count(1)
        self._warned = False
        # Answered requests whose accounting (usage, calibrator, metrics) waits for `flush`.
        self._deferred: list[_Exchange] = []
        self._flush_at: asyncio.TimerHandle | None = None
        # Answers that depend only on the pool: built once, reused.
        self._route_headers: dict[tuple[str, bool], bytes] = {}
        self._m_reason: dict[Any, Any] = {}
        self._m_requests: dict[tuple[str, str], Any] = {}
        self._m_timing: dict[str, tuple[Any, Any]] = {}  # pool: (ttft, latency) children
        self._m_rejections = {
            r: m.rejections.labels(r)
            for r in (
                "too_long",
                "bad_request",
                "no_healthy_backend",
                "body_too_large",
                "unknown_model",
            )
        }

    @property
    def pools(self) -> list[Pool]:
        """Every served model's pools (the gateway's: swapped whole by a reload)."""
        return self.gw.pools

    # ---- one stream, whatever carries it (grpcio above, or the native h2 server) ----------
    def open(self) -> _Stream:
        """A new ext_proc stream."""
        self.inflight += 1
        return _Stream()

    def answer(self, st: _Stream, message: bytes) -> Sequence[bytes]:
        """One serialized ProcessingRequest in, its serialized answers out."""
        return self.handle(st, _parse(message), message)

    def handle(self, st: _Stream, req: Any, raw: bytes = b"") -> Sequence[bytes]:
        """The answers to one ProcessingRequest (`raw`: it serialized, when at hand), in
        order: usually one; none while the request headers are held for the body, or
        for the observer; several when the held headers are answered with the body's
        chunks."""
        kind = req.WhichOneof("request")
        role = st.role
        if role == _NEW:
            if req.observability_mode:
                role = OBSERVE
            elif kind == "request_headers":
                role = ROUTE
                pc = req.protocol_config
                st.pipelined = (
                    pc.send_body_without_waiting_for_header_response
                    and pc.request_body_mode == msg.STREAMED
                )
            else:
                role = STRIP
            st.role = role
        if role == OBSERVE:
            self._observe(st, kind, req)
            if kind == "response_body":
                st.complete = req.response_body.end_of_stream
            elif kind == "response_headers":
                st.complete = req.response_headers.end_of_stream
            # Complete: the processor ends the stream (Envoy would hold it open for
            # deferred_close_timeout otherwise: one more stream per request per second).
            return _NOTHING
        if kind == "request_body":
            return self._request_body(st, req.request_body)
        if kind == "request_headers":
            return self._request_headers(st, req.request_headers, raw)
        if kind == "response_body":
            return self._strip(st, req.response_body)
        if kind == "response_headers":
            return _CONTINUE_RESPONSE_HEADERS
        if kind == "request_trailers":
            return (msg.CONTINUE_REQUEST_TRAILERS,)
        return (msg.CONTINUE_RESPONSE_TRAILERS,)

    def close(self, st: _Stream) -> None:
        """The stream ended (completed, cancelled or broken)."""
        self.inflight -= 1
        if st.role == OBSERVE:
            self._observed_end(st)
            return
        ex = st.ex
        if ex is not None and not ex.finished and not ex.id:
            # Never routed (not ours, or gone before its body was read). A routed
            # request is the observer stream's to account for.
            self._finish(ex)

    def _observed_end(self, st: _Stream) -> None:
        ex = st.ex
        if ex is None or ex.finished:
            return
        relay = ex.relay
        if not ex.done and relay is not None:
            # Envoy may end the stream without a last (empty) body message carrying
            # end_of_stream. vLLM writes usage last, just before [DONE]: an SSE answer
            # whose usage arrived was complete, so it is fed back.
            relay.flush()
            if relay.usage is not None:
                ex.usage = relay.usage
                ex.done = True
        self._finish(ex)

    # ---- request: the route stream --------------------------------------------------------
    def _request_headers(self, st: _Stream, headers: Any, raw: bytes) -> tuple[bytes, ...]:
        h = msg.find_headers(raw, _REQUEST_HEADERS) if raw else None
        if h is None:
            h = msg.read_headers(headers, _REQUEST_HEADERS)
        path = h.get(":path", b"")
        q = path.find(b"?")
        if q >= 0:
            path = path[:q]
        chat = _ROUTED.get(path)
        remove = tuple(k for k in _REMOVE_CLIENT_HEADERS if k in h)
        if chat is None or h.get(":method") != b"POST" or headers.end_of_stream:
            # Not ours to route: the route table's default (the largest pool) serves it.
            # (Pipelined, the body still comes and is let through.)
            st.complete = headers.end_of_stream or not st.pipelined
            return (msg.skip_request_body(remove),) if remove else _SKIP_REQUEST_BODY
        ex = st.ex = _Exchange(path)
        ex.chat = chat
        if st.pipelined:
            # Held: answered with the routing decision once the body is here.
            st.remove = remove
            cl = h.get("content-length")
            st.expect = int(cl) if cl is not None and cl.isdigit() else -1
            return _NOTHING
        if remove:
            return (msg.remove_request_headers(remove),)
        return (msg.CONTINUE_REQUEST_HEADERS,)

    def _request_body(self, st: _Stream, body_msg: Any) -> Sequence[bytes]:
        ex = st.ex
        if ex is None or st.answered:
            st.complete = body_msg.end_of_stream
            return _CONTINUE_REQUEST_BODY
        data: bytes = body_msg.body
        if not st.pipelined:
            # BUFFERED (headers answered already): the whole body in one message.
            st.answered = st.complete = True
            return (self._route_buffered(ex, data),)
        eos: bool = body_msg.end_of_stream
        st.chunks.append(data)
        st.size += len(data)
        if st.size > self.max_body:
            st.answered = st.complete = True
            ex.outcome = Outcome.BAD_REQUEST
            ex.status = 413
            self._m_rejections["body_too_large"].inc()
            self._finish(ex)
            return (
                msg.immediate(
                    413,
                    error_body(413, f"request body over {self.max_body} bytes"),
                    "dualpool_body_too_large",
                ),
            )
        if not eos:
            if not st.more_time and (st.expect < 0 or st.size < st.expect):
                # More to upload: Envoy's clock for the held headers is running.
                st.more_time = True
                return (_MORE_TIME,)
            return _NOTHING
        st.answered = st.complete = True
        chunks = st.chunks
        n = len(chunks)
        raw = chunks[0] if n == 1 else b"".join(chunks)
        st.chunks = []
        answer = self._route(ex, raw)
        if answer is not None:
            return (answer,)
        meta = {META_NAMESPACE: {"id": ex.id}}
        key = (ex.pool.name, ex.strip)  # type: ignore[union-attr]
        if ex.endpoints or st.remove:
            headers = msg.route_headers(self._headers(ex), st.remove)
            if ex.endpoints:
                meta[LB_NAMESPACE] = {DESTINATION_HEADER: ex.endpoints}
        else:
            cached = self._route_headers.get(key)
            if cached is None:
                cached = self._route_headers[key] = msg.route_headers(self._headers(ex))
            headers = cached
        out = [msg.route_response(headers, meta)]
        if ex.payload is None:
            out += _CONTINUE_REQUEST_BODY * n
        else:
            out.append(msg.request_body_replaced(ex.payload))
            out += (msg.CLEAR_REQUEST_BODY,) * (n - 1)
        return out

    def _route_buffered(self, ex: _Exchange, raw: bytes) -> bytes:
        """The body's answer when the filter buffers it (request_body_mode BUFFERED)."""
        answer = self._route(ex, raw)
        if answer is not None:
            return answer
        meta = {META_NAMESPACE: {"id": ex.id}}
        if ex.endpoints:
            meta[LB_NAMESPACE] = {DESTINATION_HEADER: ex.endpoints}
        return msg.request_body_response(self._headers(ex), ex.payload, meta)

    def _headers(self, ex: _Exchange) -> tuple[tuple[str, bytes], ...]:
        assert ex.pool is not None
        headers: tuple[tuple[str, bytes], ...] = ((POOL_HEADER, ex.pool.name.encode()),)
        if ex.strip:
            headers += ((STRIP_HEADER, b"1"),)
        if ex.endpoints:
            headers += ((DESTINATION_HEADER, ex.endpoints.encode()),)
        return headers

    def _route(self, ex: _Exchange, raw: bytes) -> bytes | None:
        """Route the request; None when routed (ex.pool set), else Envoy's immediate answer."""
        try:
            body = parse_json_body(raw)  # the gateway's: bounded depth and numbers
        except BadJson as exc:
            return self._bad_request(ex, str(exc))
        if type(body) is not dict:
            return self._bad_request(ex, "request body must be a JSON object")
        # The request's model, as the gateway finds it: its router and its pools.
        gw = self.gw
        name = body.get("model")
        served = gw.lookup.get(name) if type(name) is str else None
        if served is None:
            if type(name) is not str or not gw.models.strict:
                served = gw.default
            else:
                return self._unknown_model(ex, name)
        ex.served = served
        pools = served.pools
        try:
            routed = served.router.route(body, saturated=[p.saturated for p in pools], chat=ex.chat)
        except RequestError as exc:
            return self._bad_request(ex, str(exc), exc.param)
        ex.routed = routed
        d = routed.decision
        m = self.metrics
        child = self._m_reason.get(d.reason)
        if child is None:
            child = self._m_reason[d.reason] = m.routing.labels(d.reason)
        child.inc()
        if d.rejected:
            ex.outcome = Outcome.REJECTED
            ex.status = 400
            self._m_rejections["too_long"].inc()
            self._finish(ex)
            return msg.immediate(400, error_body(400, d.message), "dualpool_rejected_too_long")
        so = body.get("stream_options")
        if so is not None and type(so) is not dict:
            # vLLM's StreamOptions is an object (the gateway checks it too).
            return self._bad_request(
                ex, "stream_options: Input should be a valid dictionary", "stream_options"
            )
        if d.pool != d.home:
            m.spillovers.labels(pools[d.home].name, pools[d.pool].name).inc()
        pool = pools[d.pool]
        if self.endpoint_picker:
            backend = pool.pick()
            if backend is None:
                ex.outcome = Outcome.UNAVAILABLE
                ex.status = 503
                ex.pool = pool
                self._m_rejections["no_healthy_backend"].inc()
                self._finish(ex)
                return msg.immediate(
                    503,
                    error_body(503, f"no healthy backend in pool {pool.name!r}"),
                    "dualpool_no_healthy_backend",
                )
            ex.backend = backend
            backend.inflight += 1
            names = [backend.name]
            names += [b.name for b in pool.healthy if b is not backend][:_FALLBACK_ENDPOINTS]
            ex.endpoints = ",".join(names)
        ex.pool = pool
        pool.inflight += 1
        ex.stream = body.get("stream") is True
        if ask_for_usage(body):
            ex.strip = True
            ex.payload = json.dumps(body).encode()
        now = ex.t_sent = time.monotonic()
        # Handed to the observer stream, which finds it by this id (dynamic metadata).
        ex.id = rid = str(next(self._ids))
        unclaimed = self._unclaimed
        if unclaimed:
            self._sweep(unclaimed, now)
        unclaimed[rid] = ex
        return None

    def _sweep(self, unclaimed: dict[str, _Exchange], now: float) -> None:
        """Release requests no observer stream claimed in time (none configured?)."""
        for rid, ex in unclaimed.items():
            if now - ex.t_sent < _CLAIM_TIMEOUT:
                return
            del unclaimed[rid]
            if not self._warned:
                self._warned = True
                log.warning(
                    "no usage observer claimed a routed request within %gs: is the "
                    "observability ext_proc filter of deploy/envoy/envoy.yaml configured "
                    "(and this processor its only endpoint)? Usage feedback needs it.",
                    _CLAIM_TIMEOUT,
                )
            ex.finished = True
            self._release(ex)
            break  # the dict changed: the next request sweeps on

    def _unknown_model(self, ex: _Exchange, name: str) -> bytes:
        # vLLM's answer (serving_engine._check_model), as the gateway gives it.
        ex.outcome = Outcome.CLIENT_ERROR
        ex.status = 404
        self._m_rejections["unknown_model"].inc()
        self._finish(ex)
        return msg.immediate(
            404,
            error_body(404, f"The model `{name}` does not exist.", "model"),
            "dualpool_unknown_model",
        )

    def _bad_request(self, ex: _Exchange, message: str, param: str | None = None) -> bytes:
        ex.outcome = Outcome.BAD_REQUEST
        ex.status = 400
        self._m_rejections["bad_request"].inc()
        self._finish(ex)
        return msg.immediate(400, error_body(400, message, param), "dualpool_bad_request")

    # ---- response: the strip stream (only for streams we asked usage for) ----------------
    def _strip(self, st: _Stream, body_msg: Any) -> tuple[bytes, ...]:
        relay = st.relay
        if relay is None:
            relay = st.relay = SseRelay(True)
        data: bytes = body_msg.body
        out = relay.feed(data) if data else b""
        if body_msg.end_of_stream:
            out += relay.flush()
            st.complete = True
        if out is data or out == data:
            return _CONTINUE_RESPONSE_BODY
        return (msg.response_body_replaced(out),)

    # ---- response: the observer stream (Envoy does not wait for it) -----------------------
    def _observe(self, st: _Stream, kind: str, req: Any) -> None:
        ex = st.ex
        if ex is None:
            if st.looked:
                return
            st.looked = True
            fm = req.metadata_context.filter_metadata
            if META_NAMESPACE not in fm:
                return  # not a request we routed
            field = fm[META_NAMESPACE].fields.get("id")
            ex = self._unclaimed.pop(field.string_value, None) if field is not None else None
            if ex is None or ex.finished:
                return
            st.ex = ex
            if self._deferred and kind == "request_headers":
                # This request is on its way to its backend and Envoy waits for the
                # answer: the earlier requests' accounting runs now, not on a timer
                # that may fire while Envoy needs the core we share.
                self.flush()
        if kind == "response_body":
            self._response_body(ex, req.response_body)
        elif kind == "response_headers":
            self._response_headers(ex, req.response_headers)

    def _response_headers(self, ex: _Exchange, headers: Any) -> None:
        if ex.finished:
            return
        ex.t_first = time.monotonic()
        h = msg.read_headers(headers, _RESPONSE_HEADERS)
        try:
            status = int(h.get(":status", b"0"))
        except ValueError:
            status = 0
        ex.status = status
        if not headers.end_of_stream:
            if status == 200:
                if h.get("content-type", b"").startswith(b"text/event-stream"):
                    ex.relay = SseRelay(False)
                else:
                    ex.body = []
                return
            if status == 400 and self._has_larger(ex):
                ex.body = []  # a misroute? (vLLM's over-length 400)
                return
        ex.done = True  # nothing in the body for us
        self._finish(ex)

    def _has_larger(self, ex: _Exchange) -> bool:
        """A larger pool exists: an over-length 400 from this one would be a misroute."""
        assert ex.routed is not None and ex.served is not None
        return bool(ex.served.router.policy.fallbacks(ex.routed.decision))

    def _response_body(self, ex: _Exchange, body_msg: Any) -> None:
        if ex.finished:
            return
        data: bytes = body_msg.body
        eos: bool = body_msg.end_of_stream
        relay = ex.relay
        if relay is not None:
            if data:
                relay.feed(data)
            if eos:
                relay.flush()
                ex.usage = relay.usage
                ex.done = True
                self._finish(ex)
            return
        parts = ex.body
        if parts is None:
            return
        if data:
            parts.append(data)
        if eos:
            ex.done = True
            ex.answer = parts[0] if len(parts) == 1 else b"".join(parts)
            ex.body = None
            self._finish(ex)

    # ---- the end of a request -----------------------------------------------------------
    def _finish(self, ex: _Exchange) -> None:
        """Account for a request once: when its answer is complete, or when its stream ends."""
        if ex.finished:
            return
        ex.finished = True
        ex.t_end = time.monotonic()
        self._release(ex)
        if ex.outcome or ex.pool is None:
            self._account(ex)  # answered by the processor itself, or not routed
            return
        self._deferred.append(ex)
        if self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_later(_OBSERVE_DELAY, self.flush)

    def flush(self) -> None:
        """Account for the answered requests now (also at shutdown, and in tests)."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        done, self._deferred = self._deferred, []
        for ex in done:
            self._account(ex)

    def _account(self, ex: _Exchange) -> None:
        pool = ex.pool
        outcome = ex.outcome
        if pool is not None and not outcome:
            status = ex.status
            answer = ex.answer
            if answer:
                if status == 200:
                    ex.usage = usage_from_body(answer)
                elif status == 400 and b"maximum context length" in answer:
                    # Our estimate was too low for this pool; Envoy cannot retry on a
                    # larger one, so the client gets vLLM's 400 and we count it.
                    self.metrics.misroutes.labels(pool.name).inc()
            if not ex.done:
                outcome = Outcome.CLIENT_CLOSED if status else Outcome.UPSTREAM_ERROR
                if ex.relay is not None:
                    outcome = Outcome.CLIENT_CLOSED
            elif 200 <= status < 300:
                outcome = Outcome.OK
            elif 400 <= status < 500:
                outcome = Outcome.CLIENT_ERROR
            elif status == 504:
                outcome = Outcome.TIMEOUT
            else:
                outcome = Outcome.UPSTREAM_ERROR
            if ex.t_sent:
                timing = self._m_timing.get(pool.name)
                if timing is None:
                    m = self.metrics
                    timing = self._m_timing[pool.name] = (
                        m.ttft.labels(pool.name),
                        m.latency.labels(pool.name),
                    )
                if ex.t_first:
                    timing[0].observe(ex.t_first - ex.t_sent)
                timing[1].observe(ex.t_end - ex.t_sent)
            if ex.usage is not None and ex.routed is not None and ex.served is not None:
                record_feedback(ex.served.router, self.metrics, ex.routed, ex.usage)
        if not outcome:
            return  # not a routed request (GET /v1/models, ...)
        pname = pool.name if pool is not None else "none"
        key = (pname, outcome)
        child = self._m_requests.get(key)
        if child is None:
            child = self._m_requests[key] = self.metrics.requests.labels(*key)
        child.inc()
        if ex.routed is not None and ACCESS_LOG.isEnabledFor(self._access_level):
            self._access(ex, outcome)

    def _release(self, ex: _Exchange) -> None:
        """Give back the request's slot in its pool (and backend)."""
        if ex.backend is not None:
            ex.backend.inflight -= 1
        if ex.pool is not None and not ex.outcome and ex.id:
            ex.pool.inflight -= 1

    def _access(self, ex: _Exchange, outcome: str) -> None:
        routed = ex.routed
        assert routed is not None
        est = routed.estimate
        d = routed.decision
        usage = ex.usage
        ACCESS_LOG.log(
            self._access_level,
            access_line(
                (
                    ("ts", round(time.time(), 3)),
                    ("face", "extproc"),
                    ("path", ex.path.decode("latin-1")),
                    ("pool", ex.pool.name if ex.pool else None),
                    ("backend", ex.backend.name if ex.backend else None),
                    ("category", est.category),
                    ("estimate_prompt_tokens", est.prompt_tokens_point),
                    ("budget", d.budget),
                    ("output_source", est.output_source),
                    ("reason", d.reason.value),
                    ("stream", ex.stream),
                    (
                        "usage",
                        {
                            "prompt_tokens": usage.get("prompt_tokens"),
                            "completion_tokens": usage.get("completion_tokens"),
                        }
                        if usage
                        else None,
                    ),
                    ("status", ex.status),
                    ("outcome", outcome),
                    ("latency_ms", round((ex.t_end - ex.t_start) * 1000, 3)),
                )
            ),
        )
