"""dualpool's routing inside Envoy: the ext_proc v3 ExternalProcessor service.

One gRPC stream per HTTP request; Envoy sends each phase, we answer each:

    request headers ─► path: routed (/v1/chat/completions, /v1/completions) or not
                       (not: no body, no answer phases; the client's routing header removed)
    request body    ─► (BUFFERED) Router.route(body, saturated) — the gateway's Router
                       │ malformed ─► ImmediateResponse 400 (OpenAI error)
                       │ too long  ─► ImmediateResponse 400 (vLLM's words), no backend called
                       ▼
                       x-dualpool-pool: POOL (the route table picks the pool's cluster),
                       clear_route_cache; stream_options.include_usage added when the
                       client did not ask (body replaced); endpoint-picker mode also names
                       the backend (x-gateway-destination-endpoint, metadata envoy.lb)
    response headers ─► x-dualpool-pool on the answer; body mode for the rest:
                       SSE 200 ─► STREAMED, JSON 200 or a 400 ─► BUFFERED, else NONE
    response body   ─► SseRelay (reads usage, strips the injected usage event) or
                       usage_from_body ─► record_feedback (calibrator + metrics)
    stream end      ─► requests_total{pool, outcome}, latency histograms, access log

Pools, backends, health, scraped load, metrics and the calibrator are the
gateway's own objects (a `Gateway` built by `GatewayServer`): one implementation
of the decision for both faces, and one calibrator when both run in one process.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from dualpool.errors import RequestError
from dualpool.extproc import _messages as msg
from dualpool.gateway._backends import Backend, Pool
from dualpool.gateway._errors import error_body
from dualpool.gateway._feedback import record_feedback
from dualpool.gateway._gateway import Gateway
from dualpool.gateway._sse import SseRelay, ask_for_usage, usage_from_body
from dualpool.gateway._telemetry import ACCESS_LOG, Outcome, access_line
from dualpool.router import RoutedRequest

__all__ = [
    "DESTINATION_HEADER",
    "LB_NAMESPACE",
    "POOL_HEADER",
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
# Endpoints named after the first one (tried in order when Envoy retries).
_FALLBACK_ENDPOINTS = 2

_ROUTED = {b"/v1/chat/completions": True, b"/v1/completions": False}
_REMOVE_CLIENT_HEADERS = (POOL_HEADER, DESTINATION_HEADER)


class _Exchange:
    """The state of one HTTP request across its ext_proc phases."""

    __slots__ = (
        "backend",
        "body_mode",
        "chat",
        "done",
        "finished",
        "outcome",
        "path",
        "pool",
        "relay",
        "routed",
        "status",
        "stream",
        "strip",
        "t_first",
        "t_sent",
        "t_start",
        "usage",
    )

    def __init__(self) -> None:
        self.path = b""
        self.chat: bool | None = None
        self.routed: RoutedRequest | None = None
        self.pool: Pool | None = None
        self.backend: Backend | None = None
        self.stream = False
        self.strip = False
        self.status = 0
        self.body_mode = msg.NONE
        self.relay: SseRelay | None = None
        self.usage: dict[str, Any] | None = None
        # The answer was seen to its end (or its body was not asked for).
        self.done = False
        # Accounted for (metrics, feedback, counters released).
        self.finished = False
        # Set when the processor answered itself (rejected, bad request).
        self.outcome = ""
        self.t_start = time.monotonic()
        self.t_sent = 0.0
        self.t_first = 0.0


class ExtProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """envoy.service.ext_proc.v3.ExternalProcessor over the gateway's router and pools."""

    def __init__(self, gateway: Gateway, *, endpoint_picker: bool = False) -> None:
        self.gw = gateway
        self.router = gateway.router
        self.pools = gateway.pools
        self.metrics = gateway.metrics
        self.endpoint_picker = endpoint_picker
        self.inflight = 0
        self._access_level = logging.getLevelName(gateway.config.log.access.upper())
        m = self.metrics
        # Answers that depend only on the pool (and the body mode): built once, reused.
        self._routed: dict[str, Any] = {}
        self._answers: dict[tuple[str, int, bool], Any] = {}
        self._m_reason: dict[Any, Any] = {}
        self._m_requests: dict[tuple[str, str], Any] = {}
        self._m_rejections = {
            r: m.rejections.labels(r) for r in ("too_long", "bad_request", "no_healthy_backend")
        }

    # ---- the gRPC method ---------------------------------------------------------------
    async def Process(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        ex = self.open()
        try:
            async for req in request_iterator:
                yield self.handle(ex, req)
        finally:
            self.close(ex)

    # ---- one stream, whatever carries it (grpcio above, or the native h2 server) ----------
    def open(self) -> _Exchange:
        """A new ext_proc stream (one HTTP request)."""
        self.inflight += 1
        return _Exchange()

    def handle(self, ex: _Exchange, req: Any) -> Any:
        """The answer to one ProcessingRequest of the stream."""
        kind = req.WhichOneof("request")
        if kind == "request_headers":
            return self._request_headers(ex, req.request_headers)
        if kind == "request_body":
            return self._request_body(ex, req.request_body)
        if kind == "response_headers":
            return self._response_headers(ex, req.response_headers)
        if kind == "response_body":
            return self._response_body(ex, req.response_body)
        if kind == "request_trailers":
            return msg.CONTINUE_REQUEST_TRAILERS
        return msg.CONTINUE_RESPONSE_TRAILERS

    def close(self, ex: _Exchange) -> None:
        """The stream ended (completed, cancelled or broken): account for it once."""
        self.inflight -= 1
        relay = ex.relay
        if not ex.done and relay is not None:
            # Envoy may end the ext_proc stream without a last (empty) body message
            # carrying end_of_stream. vLLM writes usage last, just before [DONE]: an
            # SSE answer whose usage arrived was complete, so it is fed back.
            relay.flush()
            if relay.usage is not None:
                ex.usage = relay.usage
                ex.done = True
        self._finish(ex)

    # ---- request ------------------------------------------------------------------------
    def _request_headers(self, ex: _Exchange, headers: Any) -> Any:
        h = msg.read_headers(headers)
        path = h.get(":path", b"")
        q = path.find(b"?")
        if q >= 0:
            path = path[:q]
        ex.path = path
        chat = _ROUTED.get(path)
        remove = tuple(k for k in _REMOVE_CLIENT_HEADERS if k in h)
        if chat is None or h.get(":method") != b"POST" or headers.end_of_stream:
            # Not ours to route: the route table's default (the largest pool) serves it.
            return msg.skip_request_body(remove)
        ex.chat = chat
        if remove:
            return msg.remove_request_headers(remove)
        return msg.CONTINUE_REQUEST_HEADERS

    def _request_body(self, ex: _Exchange, body_msg: Any) -> Any:
        raw: bytes = body_msg.body
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._bad_request(ex, f"request body is not valid JSON: {exc}")
        if type(body) is not dict:
            return self._bad_request(ex, "request body must be a JSON object")
        pools = self.pools
        try:
            routed = self.router.route(body, saturated=[p.saturated for p in pools], chat=ex.chat)
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
        if d.pool != d.home:
            m.spillovers.labels(pools[d.home].name, pools[d.pool].name).inc()
        pool = pools[d.pool]
        headers: tuple[tuple[str, bytes], ...] = ((POOL_HEADER, pool.name.encode()),)
        metadata = None
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
            endpoints = ",".join(names)
            headers += ((DESTINATION_HEADER, endpoints.encode()),)
            metadata = {LB_NAMESPACE: {DESTINATION_HEADER: endpoints}}
        ex.pool = pool
        pool.inflight += 1
        ex.stream = body.get("stream") is True
        payload = None
        if ask_for_usage(body):
            ex.strip = True
            payload = json.dumps(body).encode()
        ex.t_sent = time.monotonic()
        if payload is None and metadata is None:
            # The common case is the same message for every request to a pool: built once.
            cached = self._routed.get(pool.name)
            if cached is None:
                cached = self._routed[pool.name] = msg.request_body_response(headers, None)
            return cached
        return msg.request_body_response(headers, payload, metadata)

    def _bad_request(self, ex: _Exchange, message: str, param: str | None = None) -> Any:
        ex.outcome = Outcome.BAD_REQUEST
        ex.status = 400
        self._m_rejections["bad_request"].inc()
        self._finish(ex)
        return msg.immediate(400, error_body(400, message, param), "dualpool_bad_request")

    # ---- response -----------------------------------------------------------------------
    def _response_headers(self, ex: _Exchange, headers: Any) -> Any:
        pool = ex.pool
        if pool is None or ex.routed is None:
            return msg.CONTINUE_RESPONSE_HEADERS
        ex.t_first = time.monotonic()
        h = msg.read_headers(headers)
        try:
            status = int(h.get(":status", b"0"))
        except ValueError:
            status = 0
        ex.status = status
        mode = msg.NONE
        if not headers.end_of_stream:
            if status == 200:
                if h.get("content-type", b"").startswith(b"text/event-stream"):
                    mode = msg.STREAMED
                    ex.relay = SseRelay(ex.strip)
                else:
                    mode = msg.BUFFERED
            elif status == 400 and self._has_larger(ex):
                mode = msg.BUFFERED  # a misroute? (vLLM's over-length 400)
        ex.body_mode = mode
        if mode == msg.NONE:
            ex.done = True
            self._finish(ex)
        # Stripping the usage event changes the length: let Envoy send it chunked.
        strip = ex.strip and mode == msg.STREAMED
        key = (pool.name, mode, strip)
        cached = self._answers.get(key)
        if cached is None:
            cached = self._answers[key] = msg.response_headers_response(
                ((POOL_HEADER, pool.name.encode()),), mode, ("content-length",) if strip else ()
            )
        return cached

    def _has_larger(self, ex: _Exchange) -> bool:
        """A larger pool exists: an over-length 400 from this one would be a misroute."""
        assert ex.routed is not None
        return bool(self.router.policy.fallbacks(ex.routed.decision))

    def _response_body(self, ex: _Exchange, body_msg: Any) -> Any:
        data: bytes = body_msg.body
        eos: bool = body_msg.end_of_stream
        relay = ex.relay
        if relay is not None:
            out = relay.feed(data) if data else b""
            if eos:
                out += relay.flush()
                ex.usage = relay.usage
                ex.done = True
                # Accounted before Envoy gets the last bytes: whoever read the answer
                # sees its feedback and metrics.
                self._finish(ex)
            if out is data or out == data:
                return msg.CONTINUE_RESPONSE_BODY
            return msg.response_body_replaced(out)
        if eos:
            ex.done = True
            if ex.status == 200:
                ex.usage = usage_from_body(data)
            elif ex.status == 400 and b"maximum context length" in data and ex.pool is not None:
                # Our estimate was too low for this pool; Envoy cannot retry on a larger
                # one, so the client gets vLLM's 400 and we count it.
                self.metrics.misroutes.labels(ex.pool.name).inc()
            self._finish(ex)
        return msg.CONTINUE_RESPONSE_BODY

    # ---- the end of a request -----------------------------------------------------------
    def _finish(self, ex: _Exchange) -> None:
        """Account for a request once: when its answer is complete, or when its stream ends."""
        if ex.finished:
            return
        ex.finished = True
        pool = ex.pool
        outcome = ex.outcome
        if ex.backend is not None:
            ex.backend.inflight -= 1
        if pool is not None and not outcome:
            pool.inflight -= 1
            status = ex.status
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
                now = time.monotonic()
                m = self.metrics
                if ex.t_first:
                    m.ttft.labels(pool.name).observe(ex.t_first - ex.t_sent)
                m.latency.labels(pool.name).observe(now - ex.t_sent)
            if ex.usage is not None and ex.routed is not None:
                record_feedback(self.router, self.metrics, ex.routed, ex.usage)
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
                    ("latency_ms", round((time.monotonic() - ex.t_start) * 1000, 3)),
                )
            ),
        )
