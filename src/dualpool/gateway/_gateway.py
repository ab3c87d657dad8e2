"""The gateway: what arrives on the client socket, and where it goes.

    client ─► dualpool.http ─► Gateway.handle ─► POST /v1/(chat/)completions
                                  │                 └► start(): auth, parse, route ─► Proxy
                                  │                    (_proxy.py: the plan, attempts, answers)
                                  └► /health /ready /v1/models /metrics /admin (_endpoints.py)

When a request ends, `finish` feeds usage back to the router (calibration),
counts it, and writes the access log line. Health changes go through
`set_health` (the request path and the prober both call it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine
from typing import Any

from dualpool.errors import RequestError
from dualpool.gateway import _endpoints as ep
from dualpool.gateway._attempt import Attempt, Context
from dualpool.gateway._backends import Backend, Pool
from dualpool.gateway._config import GatewayConfig
from dualpool.gateway._errors import error_body
from dualpool.gateway._feedback import record_feedback
from dualpool.gateway._headers import filter_request_headers
from dualpool.gateway._models import Models
from dualpool.gateway._proxy import Proxy
from dualpool.gateway._sse import ask_for_usage
from dualpool.gateway._telemetry import ACCESS_LOG, GatewayMetrics, Outcome, access_line
from dualpool.http import BadJson, Exchange, HttpConnection, Request, parse_json_body
from dualpool.policy import Reason
from dualpool.router import RoutedRequest, Router

__all__ = ["Gateway"]

log = logging.getLogger("dualpool.gateway")

_ENDPOINTS = {
    b"/health": ep.health,
    b"/ready": ep.ready,
    b"/metrics": ep.metrics,
    b"/v1/models": ep.models,
}
_BREAKER = {"closed": 0.0, "open": 1.0, "half_open": 2.0}
_PROXIED = {b"/v1/chat/completions": True, b"/v1/completions": False}


class Gateway:
    """Routes OpenAI requests to pools; see the module docstring for the flow."""

    def __init__(
        self, config: GatewayConfig, models: Models, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.loop = loop
        self.metrics = GatewayMetrics()
        self.connections: set[HttpConnection] = set()
        # The listening server (set by GatewayServer): reload swaps its limits.
        self.server: Any = None
        self.draining = False
        # Past the drain deadline: what is still in flight is ended with an error.
        self.cut_off = False
        self.inflight = 0
        self._m_reason = {r: self.metrics.routing.labels(r) for r in Reason}
        self._m_requests: dict[tuple[str, str], Any] = {}
        # Attempts in flight, for the periodic timeout sweep and the drain.
        self.live: set[Attempt] = set()
        # Background tasks started after the start (DNS loops of reloaded pools, reloads).
        self.tasks: set[asyncio.Task[Any]] = set()
        self.reloading = asyncio.Lock()
        self.set_models(models)
        self.proxy = Proxy(self)
        self.apply_settings(config)
        self.metrics.add_collector(self._collect)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def set_models(self, models: Models) -> None:
        """The served models (at start, and swapped whole by a reload)."""
        self.models = models
        self.lookup = models.lookup
        self.default = models.default
        # The first model's: the calibrator (shared by every router).
        self.router: Router = models.default.router
        self.model = models.default.name
        # Every model's pools; each model's in its policy's order.
        self.pools: list[Pool] = models.pools

    def apply_settings(self, config: GatewayConfig) -> None:
        """The global settings read on the request path (at start and on reload)."""
        self.config = config
        self.api_keys = config.auth.api_keys
        self.admin_key = config.auth.admin_key
        self.retry_after = ((b"retry-after", str(config.backpressure.retry_after).encode()),)
        self._access_level = logging.getLevelName(config.log.access.upper())
        self._access_on = ACCESS_LOG.isEnabledFor(self._access_level)
        self.first_byte_timeout = config.timeouts.first_byte
        self.idle_timeout = config.timeouts.idle
        self.proxy.configure(config, self.pools)

    # ---- dualpool.http Handler ------------------------------------------------------
    def handle(self, req: Request, ex: Exchange) -> Any:
        path = req.path
        method = req.method
        chat = _PROXIED.get(path)
        if chat is not None:
            if method == b"POST":
                return self.start(req, ex, path, chat)
        elif method == b"GET" or method == b"HEAD":
            endpoint = _ENDPOINTS.get(path)
            if endpoint is not None:
                endpoint(self, req, ex)
                return None
            if path == b"/admin" or path.startswith(b"/admin/"):
                ep.admin(self, req, ex)
                return None
        if chat is not None or path in _ENDPOINTS:
            self.error(ex, 405, f"method {method.decode()} not allowed on {path.decode()}")
        else:
            self.error(ex, 404, f"no route for {path.decode('latin-1')}")
        return None

    def error_body(self, status: int, message: str) -> bytes:
        if status == 413:
            self.metrics.rejections.labels("body_too_large").inc()
            self.metrics.requests.labels("none", Outcome.BAD_REQUEST).inc()
        elif 400 <= status < 500:
            self.metrics.rejections.labels("malformed_http").inc()
        return error_body(status, message)

    # ---- helpers for endpoints and the proxy ------------------------------------------
    def error(
        self,
        ex: Exchange,
        status: int,
        message: str,
        param: str | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        ex.send(status, error_body(status, message, param), headers)

    def authorized(self, req: Request, keys: frozenset[str]) -> bool:
        value = req.header(b"authorization")
        if value is None or value[:7].lower() != b"bearer ":
            return False
        try:
            return value[7:].strip().decode() in keys
        except UnicodeDecodeError:
            return False

    def ready(self) -> bool:
        return all(p.healthy for p in self.pools)

    # ---- the proxied request -------------------------------------------------------------
    def start(self, req: Request, ex: Exchange, path: bytes, chat: bool) -> Any:
        """Check, parse, route; hand the request to the proxy (see _proxy.py)."""
        m = self.metrics
        if self.api_keys and not self.authorized(req, self.api_keys):
            m.requests.labels("none", Outcome.UNAUTHORIZED).inc()
            m.rejections.labels("unauthorized").inc()
            self.error(ex, 401, "missing or invalid API key")
            return None
        if self.draining:
            self.error(ex, 503, "the gateway is shutting down", headers=self.retry_after)
            return None
        try:
            body = parse_json_body(req.body)
        except BadJson as exc:
            self._bad_request(ex, str(exc))
            return None
        if type(body) is not dict:
            self._bad_request(ex, "request body must be a JSON object")
            return None
        name = body.get("model")
        served = self.lookup.get(name) if type(name) is str else None
        if served is None:
            if type(name) is not str or not self.models.strict:
                served = self.default  # no model (or not a string: the parse says 400)
            else:
                self._unknown_model(ex, name)
                return None
        pools = served.pools
        try:
            routed = served.router.route(body, saturated=[p.saturated for p in pools], chat=chat)
        except RequestError as exc:
            self._bad_request(ex, str(exc), exc.param)
            return None
        d = routed.decision
        self._m_reason[d.reason].inc()
        if d.rejected:
            m.requests.labels("none", Outcome.REJECTED).inc()
            m.rejections.labels("too_long").inc()
            self.error(ex, 400, d.message)
            self._access(req, None, routed, 400, Outcome.REJECTED, None, 0)
            return None
        so = body.get("stream_options")
        if so is not None and type(so) is not dict:
            # vLLM's StreamOptions is an object (400 there too); checked here because a
            # streamed request's stream_options is rewritten below.
            self._bad_request(
                ex, "stream_options: Input should be a valid dictionary", "stream_options"
            )
            return None
        if d.pool != d.home:
            m.spillovers.labels(pools[d.home].name, pools[d.pool].name).inc()
        stream = body.get("stream") is True
        strip = False
        payload = req.body
        if stream and ask_for_usage(body):
            # Usage feeds the calibrator; the added chunk is stripped on the way out.
            strip = True
            payload = json.dumps(body).encode()
        ctx = Context(req, ex, routed, stream, strip, served)
        ctx.payload = payload
        ctx.upstream_head = (
            b"POST "
            + path
            + b" HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            % len(payload)
            + filter_request_headers(req.headers)
        )
        self.inflight += 1
        return self.proxy.start(ctx)

    def _unknown_model(self, ex: Exchange, name: Any) -> None:
        # vLLM's answer (serving_engine._check_model): 404, type NotFoundError.
        self.metrics.requests.labels("none", Outcome.CLIENT_ERROR).inc()
        self.metrics.rejections.labels("unknown_model").inc()
        ex.send(404, error_body(404, f"The model `{name}` does not exist.", "model"))

    def _bad_request(self, ex: Exchange, message: str, param: str | None = None) -> None:
        self.metrics.requests.labels("none", Outcome.BAD_REQUEST).inc()
        self.metrics.rejections.labels("bad_request").inc()
        self.error(ex, 400, message, param)

    def finish(self, ctx: Context) -> None:
        """A proxied request is over: feedback, counters, access log."""
        self.inflight -= 1
        self._feedback(ctx)
        pname = ctx.pool.name if ctx.pool is not None else "none"
        key = (pname, ctx.outcome)
        child = self._m_requests.get(key)
        if child is None:
            child = self._m_requests[key] = self.metrics.requests.labels(*key)
        child.inc()
        if self._access_on:
            self._access(ctx.req, ctx, ctx.routed, ctx.status, ctx.outcome, ctx.usage, ctx.attempts)

    def sweep_timeouts(self) -> None:
        """Fail attempts past their first-byte or idle timeout (called periodically)."""
        now = self.loop.time()
        for att in list(self.live):
            att.check_timeout(now)

    def cut(self) -> None:
        """The drain deadline: end what is in flight with a clean error (streams: an SSE
        error event and the chunked end), and refuse what would start."""
        self.cut_off = True
        for att in list(self.live):
            att.cut()
        for pool in self.pools:
            pool.refuse_waiters()

    # ---- health ---------------------------------------------------------------------------
    def set_health(self, backend: Backend, healthy: bool, why: str = "") -> None:
        if not backend.set_healthy(healthy):
            return
        for p in self.pools:
            if p.name == backend.pool:
                p.refresh()
        self.metrics.health_changes.labels(
            backend.pool, backend.name, "in" if healthy else "out"
        ).inc()
        log.warning(
            "backend %s of pool %s %s%s",
            backend.name,
            backend.pool,
            "is back in" if healthy else "taken out",
            f": {why}" if why else "",
        )

    def succeeded(self, backend: Backend) -> None:
        """An answer from `backend`: a half-open trial that succeeds puts it back in."""
        backend.succeeded()
        if not backend.healthy:
            self.set_health(backend, True, "half-open trial answered")

    def detect_outliers(self) -> None:
        """One outlier-detection pass over every pool (the circuit breaker's trip)."""
        h = self.config.health
        for pool in self.pools:
            for backend, reason, why in pool.detect_outliers(
                max_error_rate=h.max_error_rate,
                min_requests=h.min_requests,
                latency_factor=h.latency_factor,
                latency_floor=h.latency_floor,
            ):
                backend.eject(h.ejection_time)
                self.metrics.ejections.labels(pool.name, backend.name, reason).inc()
                self.set_health(backend, False, f"outlier: {why}")

    # ---- feedback, metrics, log -------------------------------------------------------------
    def _feedback(self, ctx: Context) -> None:
        usage = ctx.usage
        if usage is None:
            return
        record_feedback(ctx.served.router, self.metrics, ctx.routed, usage)

    def _access(
        self,
        req: Request,
        ctx: Context | None,
        routed: RoutedRequest,
        status: int,
        outcome: str,
        usage: dict[str, Any] | None,
        attempts: int,
    ) -> None:
        if not ACCESS_LOG.isEnabledFor(self._access_level):
            return
        est = routed.estimate
        d = routed.decision
        ACCESS_LOG.log(
            self._access_level,
            access_line(
                (
                    ("ts", round(time.time(), 3)),
                    ("path", req.path.decode("latin-1")),
                    ("pool", ctx.pool.name if ctx and ctx.pool else None),
                    ("backend", ctx.backend.name if ctx and ctx.backend else None),
                    ("category", est.category),
                    ("estimate_prompt_tokens", est.prompt_tokens_point),
                    ("budget", d.budget),
                    ("output_source", est.output_source),
                    ("reason", d.reason.value),
                    ("stream", ctx.stream if ctx else None),
                    (
                        "usage",
                        {
                            "prompt_tokens": usage.get("prompt_tokens"),
                            "completion_tokens": usage.get("completion_tokens"),
                        }
                        if usage
                        else None,
                    ),
                    ("status", status),
                    ("outcome", outcome),
                    ("attempts", attempts),
                    ("latency_ms", round((time.monotonic() - req.received) * 1000, 3)),
                )
            ),
        )

    def _collect(self) -> None:
        m = self.metrics
        m.inflight.clear()
        m.healthy.clear()
        m.breaker.clear()
        m.backend_waiting.clear()
        m.backend_kv.clear()
        m.pool_inflight.clear()  # a reload may have removed pools
        m.pool_queued.clear()
        m.pool_saturated.clear()
        for p in self.pools:
            m.pool_inflight.labels(p.name).set(p.inflight)
            m.pool_queued.labels(p.name).set(p.num_waiting)
            m.pool_saturated.labels(p.name).set(1.0 if p.saturated else 0.0)
            for b in p.backends:
                m.inflight.labels(p.name, b.name).set(b.inflight)
                m.healthy.labels(p.name, b.name).set(1.0 if b.healthy else 0.0)
                m.breaker.labels(p.name, b.name).set(_BREAKER[b.breaker])
                m.backend_waiting.labels(p.name, b.name).set(b.waiting)
                m.backend_kv.labels(p.name, b.name).set(b.kv_usage)
        m.learned_ratio.clear()
        m.learned_samples.clear()
        for cat in self.router.estimator.calibrator.categories():
            m.learned_ratio.labels(cat["category"]).set(cat["bytes_per_token"])
            m.learned_samples.labels(cat["category"]).set(cat["samples"])
        m.connections.set(len(self.connections))
