"""The gateway: one request from the client socket to a backend and back.

    client ─► HttpConnection ─► Gateway.handle ─► auth, parse, Router.route(saturated)
                                                   │  rejected ─► 400 (vLLM's words)
                                                   ▼
                               pool slot (bounded wait, else 429) ─► backend (least loaded)
                                                   │  error before the first byte:
                                                   │  next backend, then a larger pool
                                                   ▼
                     _Exchange (a Sink): relays a stream chunk by chunk, or collects
                                                   ▼
                               answer ─► Router.observe(usage) ─► metrics, access log

The request path is: one JSON parse, one routing step, one write upstream, one
write back. Health probes, /metrics scrapes and DNS run in the background
(`_background.py`) and only set fields this path reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from dualpool.errors import RequestError
from dualpool.gateway._backends import Backend, Pool
from dualpool.gateway._config import GatewayConfig
from dualpool.gateway._errors import error_body, error_event
from dualpool.gateway._http import HttpConnection, Request
from dualpool.gateway._sse import SseRelay, usage_from_body
from dualpool.gateway._telemetry import ACCESS_LOG, GatewayMetrics, Outcome, access_line
from dualpool.gateway._upstream import UpstreamConnection
from dualpool.router import RoutedRequest, Router

__all__ = ["Gateway"]

log = logging.getLogger("dualpool.gateway")

# Headers that describe one connection, not the message (RFC 9110 7.6.1), and those
# the gateway sets itself. Neither direction forwards them.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
_NOT_UPSTREAM = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"content-type",
    b"authorization",
    b"expect",
    b"accept-encoding",
}
_NOT_DOWNSTREAM = HOP_BY_HOP | {b"content-length"}

# A non-streamed answer larger than this is refused (memory stays bounded).
MAX_RESPONSE_BYTES = 64 * 1024 * 1024

_JSON = ((b"content-type", b"application/json"),)


class ClientGone(Exception):
    """The client closed its connection while its request was being answered."""


class ResponseTooLarge(Exception):
    """A backend's non-streamed answer passed MAX_RESPONSE_BYTES."""


def filter_request_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    """Client headers worth forwarding upstream, serialised (hop-by-hop removed)."""
    out: list[bytes] = []
    extra: set[bytes] | None = None
    for k, v in headers:
        if k in _NOT_UPSTREAM:
            if k == b"connection":
                extra = {t.strip().lower() for t in v.split(b",")}
            continue
        out += (k, b": ", v, b"\r\n")
    if extra is not None and out:
        # Headers the client named in Connection are hop-by-hop too.
        kept = [out[i : i + 4] for i in range(0, len(out), 4) if out[i] not in extra]
        return b"".join(b"".join(p) for p in kept)
    return b"".join(out)


def filter_response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    extra: set[bytes] | None = None
    for k, v in headers:
        if k == b"connection":
            extra = {t.strip().lower() for t in v.split(b",")}
    return [
        (k, v) for k, v in headers if k not in _NOT_DOWNSTREAM and (extra is None or k not in extra)
    ]


class _Context:
    """One client request across its attempts."""

    __slots__ = (
        "attempts",
        "backend",
        "conn",
        "first_byte_sent",
        "misrouted",
        "outcome",
        "payload",
        "pool",
        "req",
        "routed",
        "status",
        "stream",
        "strip",
        "upstream_head",
        "usage",
    )

    def __init__(self, req: Request, routed: RoutedRequest, stream: bool, strip: bool) -> None:
        self.req = req
        self.conn = req.conn
        self.routed = routed
        self.stream = stream
        self.strip = strip
        self.payload = b""
        self.upstream_head = b""
        self.first_byte_sent = False
        self.pool: Pool | None = None
        self.backend: Backend | None = None
        self.status = 0
        self.outcome = ""
        self.usage: dict[str, Any] | None = None
        self.attempts = 0
        self.misrouted = False


class _Exchange:
    """The Sink of one upstream attempt.

    When it ends it calls `done(self, error)`: the gateway's fast-path finisher for
    a first attempt started without awaiting, else a future's resolver for the
    coroutine that awaits it. Timeouts are checked by `Gateway.sweep_timeouts`
    (one periodic timer for all exchanges, not one per request).
    """

    __slots__ = (
        "backend",
        "ctx",
        "done",
        "ended",
        "gw",
        "headers",
        "idle_timeout",
        "last",
        "loop",
        "parts",
        "pool",
        "relay",
        "relaying",
        "size",
        "status",
        "t_first",
        "t_send",
        "timeout",
        "upstream",
    )

    def __init__(
        self,
        gw: Gateway,
        ctx: _Context,
        pool: Pool,
        backend: Backend,
        upstream: UpstreamConnection,
        done: Callable[[_Exchange, BaseException | None], None],
    ) -> None:
        loop = gw.loop
        self.gw = gw
        self.loop = loop
        self.ctx = ctx
        self.pool = pool
        self.backend = backend
        self.upstream = upstream
        self.done = done
        self.ended = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.parts: list[bytes] = []
        self.size = 0
        self.relay: SseRelay | None = None
        self.relaying = False
        now = loop.time()
        self.t_send = now
        self.t_first = 0.0
        self.last = now
        self.timeout = gw.first_byte_timeout
        self.idle_timeout = gw.idle_timeout
        gw.live.add(self)

    def send(self) -> None:
        ctx = self.ctx
        ctx.conn.on_lost = self.client_lost
        self.upstream.send(
            b"".join(
                (
                    ctx.upstream_head,
                    self.backend.host_header,
                    self.pool.auth_header,
                    b"\r\n",
                    ctx.payload,
                )
            ),
            self,
        )

    # ---- Sink ----------------------------------------------------------------------
    def on_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.headers = headers
        self.last = now = self.loop.time()
        self.timeout = self.idle_timeout
        ctx = self.ctx
        if ctx.stream and status == 200:
            self.relaying = True
            self.relay = SseRelay(ctx.strip)
            client = ctx.conn
            hdrs = filter_response_headers(headers)
            hdrs.append((b"x-dualpool-pool", self.pool.name.encode()))
            client.start_stream(200, hdrs)
            ctx.first_byte_sent = True
            up = self.upstream
            client.on_pause = up.pause_reading
            client.on_resume = up.resume_reading
            if client.write_paused:
                up.pause_reading()
        else:
            self.t_first = now

    def on_body(self, data: bytes) -> None:
        self.last = self.loop.time()
        if self.relaying:
            if not self.t_first:
                self.t_first = self.last
            out = self.relay.feed(data)  # type: ignore[union-attr]
            if out:
                self.ctx.conn.send_chunk(out)
            return
        self.size += len(data)
        if self.size > MAX_RESPONSE_BYTES:
            self.upstream.detach()
            self._end(ResponseTooLarge(f"answer larger than {MAX_RESPONSE_BYTES} bytes"))
            return
        self.parts.append(data)

    def on_complete(self, keep_alive: bool) -> None:
        self.backend.release(self.upstream, keep_alive)
        self._end(None)

    def on_error(self, exc: BaseException) -> None:
        self._end(exc)

    # ---- timeouts and the client -----------------------------------------------------
    def check_timeout(self, now: float) -> None:
        if now - self.last >= self.timeout:
            self.upstream.detach()
            what = "first byte" if not self.status else "next byte"
            self._end(TimeoutError(f"no {what} from {self.backend.name} in {self.timeout:g}s"))

    def client_lost(self) -> None:
        # Closing the upstream connection makes vLLM abort the generation.
        self.upstream.detach()
        self._end(ClientGone())

    def _end(self, exc: BaseException | None) -> None:
        if not self.ended:
            self.ended = True
            self.gw.live.discard(self)
            self.ctx.conn.on_lost = None
            self.done(self, exc)


class Gateway:
    """Routes OpenAI requests to pools; see the module docstring for the flow."""

    def __init__(
        self,
        config: GatewayConfig,
        router: Router,
        pools: list[Pool],
        model: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.config = config
        self.router = router
        # In the policy's order (smallest max_model_len first).
        self.pools = pools
        self.model = model
        self.loop = loop
        self.metrics = GatewayMetrics()
        self.connections: set[HttpConnection] = set()
        self.draining = False
        self.inflight = 0
        self._keys = config.auth.api_keys
        self._admin_key = config.auth.admin_key
        self._max_wait = config.backpressure.max_wait
        self._retry_after = str(config.backpressure.retry_after).encode()
        self._same_pool = config.retries.same_pool
        self._larger = config.retries.larger_pools
        self._unhealthy_after = config.health.unhealthy_after
        self._connect_timeout = config.timeouts.connect
        self._access_level = logging.getLevelName(config.log.access.upper())
        self._pool_headers = {p.name: (b"x-dualpool-pool", p.name.encode()) for p in pools}
        m = self.metrics
        self._m_reason = {r: m.routing.labels(r) for r in _reasons()}
        self._m_feedback: dict[str, Any] = {}
        self._m_requests: dict[tuple[str, str], Any] = {}
        self._m_pool: dict[str, tuple[Any, Any]] = {}
        self._access_on = ACCESS_LOG.isEnabledFor(self._access_level)
        self.first_byte_timeout = config.timeouts.first_byte
        self.idle_timeout = config.timeouts.idle
        # Exchanges in flight, for the periodic timeout sweep.
        self.live: set[_Exchange] = set()
        self.metrics.add_collector(self._collect)

    # ---- the connection's entry point ---------------------------------------------
    def handle(self, req: Request) -> Any:
        path = req.path
        q = path.find(b"?")
        if q >= 0:
            path = path[:q]
        method = req.method
        if method == b"POST":
            if path == b"/v1/chat/completions":
                return self._proxy(req, path, True)
            if path == b"/v1/completions":
                return self._proxy(req, path, False)
        elif method == b"GET" or method == b"HEAD":
            if path == b"/health":
                req.conn.respond(200, (), b"", keep_alive=req.keep_alive)
                return None
            if path == b"/ready":
                return self._ready(req)
            if path == b"/metrics":
                key = self.config.auth.metrics_key
                if key is not None and not self._authorized(req, frozenset((key,))):
                    return self._error(req, 401, "/metrics needs the metrics key (Bearer)")
                req.conn.respond(
                    200,
                    ((b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),),
                    self.metrics.render(),
                    keep_alive=req.keep_alive,
                )
                return None
            if path == b"/v1/models":
                return self._models(req)
            if path.startswith(b"/admin"):
                return self._admin(req, path)
        known = (b"/v1/chat/completions", b"/v1/completions", b"/health", b"/ready")
        if path in known or path in (b"/metrics", b"/v1/models"):
            return self._error(req, 405, f"method {method.decode()} not allowed on {path.decode()}")
        return self._error(req, 404, f"no route for {path.decode('latin-1')}")

    def error_body(self, status: int, message: str) -> bytes:
        if status == 413:
            self.metrics.rejections.labels("body_too_large").inc()
            self.metrics.requests.labels("none", Outcome.BAD_REQUEST).inc()
        elif status in (400, 431):
            self.metrics.rejections.labels("malformed_http").inc()
        return error_body(status, message)

    # ---- small endpoints ---------------------------------------------------------------
    def _error(
        self,
        req: Request,
        status: int,
        message: str,
        param: str | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        req.conn.respond(
            status, _JSON + headers, error_body(status, message, param), keep_alive=req.keep_alive
        )

    def _authorized(self, req: Request, keys: frozenset[str]) -> bool:
        value = req.header(b"authorization")
        if value is None or value[:7].lower() != b"bearer ":
            return False
        try:
            return value[7:].strip().decode() in keys
        except UnicodeDecodeError:
            return False

    def _json(self, req: Request, status: int, obj: Any) -> None:
        req.conn.respond(status, _JSON, json.dumps(obj).encode(), keep_alive=req.keep_alive)

    def ready(self) -> bool:
        return all(p.healthy for p in self.pools)

    def _ready(self, req: Request) -> None:
        from dualpool.gateway._ops import readiness

        status, body = readiness(self)
        self._json(req, status, body)

    def _models(self, req: Request) -> None:
        if self._keys and not self._authorized(req, self._keys):
            self.metrics.requests.labels("none", Outcome.UNAUTHORIZED).inc()
            self._error(req, 401, "missing or invalid API key")
            return
        largest = self.pools[-1].max_model_len
        self._json(
            req,
            200,
            {
                "object": "list",
                "data": [
                    {
                        "id": self.model,
                        "object": "model",
                        "created": int(time.time()),
                        "owned_by": "vllm",
                        "root": self.model,
                        "parent": None,
                        "max_model_len": largest,
                        "permission": [],
                    }
                ],
            },
        )

    def _admin(self, req: Request, path: bytes) -> None:
        if self._admin_key is not None:
            if not self._authorized(req, frozenset((self._admin_key,))):
                self._error(req, 401, "the admin view needs the admin key (Bearer)")
                return
        elif self._keys:
            self._error(req, 403, "the admin view is off: set auth.admin_key to enable it")
            return
        cal = self.router.estimator.calibrator
        calib = {"categories": cal.categories(), "feedback": dict(cal.counters)}
        backends = {
            p.name: {
                "max_model_len": p.max_model_len,
                "threshold": self.router.policy.pools[p.index].effective_threshold,
                "inflight": p.inflight,
                "max_concurrency": p.max_concurrency,
                "queued": p.num_waiting,
                "saturated": p.saturated,
                "backends": [b.state() for b in p.backends],
            }
            for p in self.pools
        }
        if path in (b"/admin/calibrator", b"/admin/calibrator/"):
            self._json(req, 200, calib)
        elif path in (b"/admin/backends", b"/admin/backends/"):
            self._json(req, 200, {"pools": backends})
        elif path in (b"/admin", b"/admin/"):
            self._json(req, 200, {"calibrator": calib, "pools": backends, "model": self.model})
        else:
            self._error(req, 404, "admin views: /admin, /admin/calibrator, /admin/backends")

    # ---- the proxy ---------------------------------------------------------------------
    def _proxy(self, req: Request, path: bytes, chat: bool) -> Any:
        """Validate and route; start the first attempt without awaiting when it can.

        The common case (a free slot, a healthy backend with an idle keep-alive
        connection) sends upstream right here and finishes in `_first_done`, from
        the protocol callbacks: no task per request. Anything else (connect, wait
        for a slot, retry) returns the `_proxy_slow` coroutine for the connection to run.
        """
        m = self.metrics
        if self._keys and not self._authorized(req, self._keys):
            m.requests.labels("none", Outcome.UNAUTHORIZED).inc()
            m.rejections.labels("unauthorized").inc()
            self._error(req, 401, "missing or invalid API key")
            return None
        if self.draining:
            self._error(req, 503, "the gateway is shutting down", headers=self._retry_hdr())
            return None
        try:
            body = json.loads(req.body)
        except (ValueError, UnicodeDecodeError) as exc:
            self._bad_request(req, f"request body is not valid JSON: {exc}")
            return None
        if type(body) is not dict:
            self._bad_request(req, "request body must be a JSON object")
            return None
        pools = self.pools
        try:
            routed = self.router.route(body, saturated=[p.saturated for p in pools], chat=chat)
        except RequestError as exc:
            self._bad_request(req, str(exc), exc.param)
            return None
        d = routed.decision
        self._m_reason[d.reason].inc()
        if d.rejected:
            m.requests.labels("none", Outcome.REJECTED).inc()
            m.rejections.labels("too_long").inc()
            self._error(req, 400, d.message)
            self._access(req, None, routed, 400, Outcome.REJECTED, None, 0)
            return None
        if d.pool != d.home:
            m.spillovers.labels(pools[d.home].name, pools[d.pool].name).inc()
        stream = body.get("stream") is True
        strip = False
        payload = req.body
        if stream:
            so = body.get("stream_options")
            if not (type(so) is dict and so.get("include_usage") is True):
                body["stream_options"] = (
                    {**so, "include_usage": True} if type(so) is dict else {"include_usage": True}
                )
                strip = True
                payload = json.dumps(body).encode()
        ctx = _Context(req, routed, stream, strip)
        ctx.payload = payload
        ctx.upstream_head = (
            b"POST "
            + path
            + b" HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            % len(payload)
            + filter_request_headers(req.headers)
        )
        self.inflight += 1
        pool = pools[d.pool]
        if pool.inflight < pool.max_concurrency and not pool.num_waiting:
            backend = pool.pick()
            if backend is not None:
                upstream = backend.take_idle()
                if upstream is not None:
                    pool.inflight += 1
                    ctx.pool = pool
                    ctx.backend = backend
                    ctx.attempts = 1
                    backend.inflight += 1
                    _Exchange(self, ctx, pool, backend, upstream, self._first_done).send()
                    return None
        return self._proxy_slow(ctx, None)

    def _first_done(self, ex: _Exchange, err: BaseException | None) -> None:
        """The end of a first attempt started without a task: finish, or hand over."""
        ctx = ex.ctx
        pool = ex.pool
        backend = ex.backend
        backend.inflight -= 1
        final = True
        if err is None:
            if ex.relaying:
                self._stream_done(ctx, ex)
            elif ex.status >= 500 or self._misrouted(ctx, ex, 0):
                final = False
            else:
                self._succeeded(backend)
                self._record(ex)
                self._answer(ctx, ex)
        elif isinstance(err, ClientGone):
            ctx.outcome = Outcome.CLIENT_CLOSED
            ctx.conn.abort()
        elif ctx.first_byte_sent:
            self._stream_failed(ctx, err)
        else:
            final = False
        pool.release()
        if final:
            self._finish(ctx)
            return
        up = ex.upstream
        if err is not None and up.reused and not up.got_bytes and not isinstance(err, TimeoutError):
            prior = None  # a stale keep-alive connection: not the backend's fault
        else:
            if err is not None:
                self._failed(backend, str(err) or type(err).__name__, hard=False)
            prior = (backend, ex if err is None else err)
        task = self.loop.create_task(self._proxy_slow(ctx, prior))
        task.add_done_callback(_retrieve)

    async def _proxy_slow(
        self, ctx: _Context, prior: tuple[Backend, _Exchange | BaseException] | None
    ) -> None:
        try:
            await self._dispatch(ctx, prior)
        except Exception:  # pragma: no cover - a bug must not leave the client hanging
            log.exception("unexpected error while proxying")
            ctx.outcome = Outcome.UPSTREAM_ERROR
            if ctx.first_byte_sent:
                ctx.conn.send_chunk(error_event(500, "internal error in the gateway"))
                ctx.conn.end_stream(False)
            elif not ctx.conn.closed:
                self._error(ctx.req, 500, "internal error in the gateway")
        self._finish(ctx)

    def _finish(self, ctx: _Context) -> None:
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

    def _bad_request(self, req: Request, message: str, param: str | None = None) -> None:
        self.metrics.requests.labels("none", Outcome.BAD_REQUEST).inc()
        self.metrics.rejections.labels("bad_request").inc()
        self._error(req, 400, message, param)

    def _retry_hdr(self) -> tuple[tuple[bytes, bytes], ...]:
        return ((b"retry-after", self._retry_after),)

    def _misrouted(self, ctx: _Context, ex: _Exchange, step: int) -> bool:
        """vLLM's over-length 400 from a pool with a larger one after it."""
        if ex.status != 400 or ctx.misrouted:
            return False
        if step == 0 and not self.router.policy.fallbacks(ctx.routed.decision)[: self._larger]:
            return False
        return b"maximum context length" in b"".join(ex.parts)

    async def _dispatch(
        self, ctx: _Context, prior: tuple[Backend, _Exchange | BaseException] | None
    ) -> None:
        d = ctx.routed.decision
        plan = [self.pools[d.pool]]
        plan += [self.pools[i] for i in self.router.policy.fallbacks(d)[: self._larger]]
        last_exc: BaseException | None = None
        last_answer: _Exchange | None = None
        for step, pool in enumerate(plan):
            if not pool.healthy:
                continue
            if not pool.try_acquire() and not await pool.acquire(self._max_wait):
                if last_exc is None and last_answer is None and prior is None:
                    # Every pool that could serve it first is full: tell the client when.
                    self._overloaded(ctx, pool)
                    return
                if prior is not None:
                    res0 = prior[1]
                    prior = None
                    if isinstance(res0, _Exchange):
                        last_answer = res0
                    else:
                        last_exc = res0
                continue
            ctx.pool = pool
            try:
                tried: tuple[Backend, ...] = ()
                pending, prior = prior, None
                for _ in range(1 + self._same_pool):
                    res: _Exchange | BaseException | None
                    if pending is not None:
                        backend, res = pending
                        pending = None
                    else:
                        if ctx.conn.closed:
                            ctx.outcome = Outcome.CLIENT_CLOSED
                            return
                        maybe = pool.pick(tried)
                        if maybe is None:
                            break
                        backend = maybe
                        if last_exc is not None or last_answer is not None:
                            cause = "misroute" if ctx.misrouted else "error"
                            self.metrics.retries.labels(pool.name, cause).inc()
                        res = await self._attempt(ctx, pool, backend)
                    tried += (backend,)
                    if isinstance(res, _Exchange):
                        if res.status >= 500:
                            self._failed(backend, f"HTTP {res.status}", hard=False)
                            last_answer, last_exc = res, None
                            continue
                        if step + 1 < len(plan) and self._misrouted(ctx, res, step):
                            # Our estimate was too low for this pool: once, a larger one.
                            ctx.misrouted = True
                            self.metrics.misroutes.labels(pool.name).inc()
                            last_answer, last_exc = res, None
                            break
                        self._answer(ctx, res)
                        return
                    if res is None:
                        return  # answered (stream done, failed after its first byte, or gone)
                    last_exc, last_answer = res, None
            finally:
                pool.release()
        if last_answer is not None:
            self._answer(ctx, last_answer)
        elif last_exc is not None:
            timeout = isinstance(last_exc, TimeoutError)
            ctx.status = 504 if timeout else 502
            ctx.outcome = Outcome.TIMEOUT if timeout else Outcome.UPSTREAM_ERROR
            self._error(ctx.req, ctx.status, f"no backend could answer: {last_exc}")
        else:
            ctx.status = 503
            ctx.outcome = Outcome.UNAVAILABLE
            self.metrics.rejections.labels("no_healthy_backend").inc()
            self._error(
                ctx.req,
                503,
                f"no healthy backend in pool {plan[0].name!r} or a larger one",
                headers=self._retry_hdr(),
            )

    def _overloaded(self, ctx: _Context, pool: Pool) -> None:
        ctx.status = 429
        ctx.outcome = Outcome.OVERLOADED
        ctx.pool = pool
        self.metrics.rejections.labels("overloaded").inc()
        self._error(
            ctx.req,
            429,
            f"pool {pool.name!r} is at capacity ({pool.max_concurrency} in flight, "
            f"{pool.num_waiting} waiting); retry later",
            headers=self._retry_hdr(),
        )

    async def _attempt(
        self, ctx: _Context, pool: Pool, backend: Backend
    ) -> _Exchange | BaseException | None:
        """One try on one backend.

        Returns the exchange when a whole answer was received without relaying
        (the caller decides: forward, retry), None when the client was answered
        or is gone, or the error that happened before the first byte.
        """
        ctx.attempts += 1
        backend.inflight += 1
        ctx.backend = backend
        try:
            for fresh in (False, True):
                upstream = None if fresh else backend.take_idle()
                if upstream is None:
                    try:
                        upstream = await backend.connect(self._connect_timeout)
                    except (OSError, TimeoutError) as exc:
                        why = str(exc) or f"no connection within {self._connect_timeout:g}s"
                        self._failed(backend, f"connect: {why}", hard=True)
                        return ConnectionError(f"cannot connect to {backend.name}: {why}")
                fut: asyncio.Future[BaseException | None] = self.loop.create_future()
                ex = _Exchange(self, ctx, pool, backend, upstream, _resolver(fut))
                ex.send()
                err = await fut
                if err is None:
                    break
                if isinstance(err, ClientGone):
                    ctx.outcome = Outcome.CLIENT_CLOSED
                    ctx.conn.abort()
                    return None
                if ctx.first_byte_sent:
                    self._stream_failed(ctx, err)
                    return None
                if (
                    not fresh
                    and upstream.reused
                    and not upstream.got_bytes
                    and not isinstance(err, TimeoutError)
                ):
                    continue  # a stale keep-alive connection: once more on a new one
                self._failed(backend, str(err) or type(err).__name__, hard=False)
                return err
            else:  # pragma: no cover - the loop always breaks or returns
                return None
            if ex.relaying:
                self._stream_done(ctx, ex)
                return None
            if ex.status < 500:
                self._succeeded(backend)
                self._record(ex)
            return ex
        finally:
            backend.inflight -= 1

    def _record(self, ex: _Exchange) -> None:
        name = ex.pool.name
        pm = self._m_pool.get(name)
        if pm is None:
            pm = self._m_pool[name] = (
                self.metrics.ttft.labels(name),
                self.metrics.latency.labels(name),
            )
        if ex.t_first:
            pm[0].observe(ex.t_first - ex.t_send)
        pm[1].observe(self.loop.time() - ex.t_send)

    def _stream_done(self, ctx: _Context, ex: _Exchange) -> None:
        self._succeeded(ex.backend)
        self._record(ex)
        relay = ex.relay
        assert relay is not None
        tail = relay.flush()
        if tail:
            ctx.conn.send_chunk(tail)
        ctx.usage = relay.usage
        ctx.status = 200
        ctx.outcome = Outcome.OK
        ctx.conn.end_stream(ctx.req.keep_alive)

    def _answer(self, ctx: _Context, ex: _Exchange) -> None:
        body = ex.parts[0] if len(ex.parts) == 1 else b"".join(ex.parts)
        status = ex.status
        ctx.status = status
        if 200 <= status < 300:
            ctx.outcome = Outcome.OK
            ctx.usage = usage_from_body(body)
        elif status < 500:
            ctx.outcome = Outcome.CLIENT_ERROR
        else:
            ctx.outcome = Outcome.UPSTREAM_ERROR
        headers = filter_response_headers(ex.headers)
        headers.append(self._pool_headers[ex.pool.name])
        ctx.conn.respond(status, headers, body, keep_alive=ctx.req.keep_alive)

    def _stream_failed(self, ctx: _Context, exc: BaseException) -> None:
        """After the first byte: end the stream with an error event, never hang."""
        ctx.status = 200
        ctx.outcome = Outcome.STREAM_ERROR
        status = 504 if isinstance(exc, TimeoutError) else 502
        msg = f"the backend failed mid-stream: {exc or type(exc).__name__}"
        if ctx.backend is not None:
            self._failed(ctx.backend, msg, hard=False)
        ctx.conn.send_chunk(error_event(status, msg))
        ctx.conn.end_stream(False)

    def sweep_timeouts(self) -> None:
        """Fail exchanges past their first-byte or idle timeout (called periodically)."""
        now = self.loop.time()
        for ex in list(self.live):
            ex.check_timeout(now)

    # ---- health (passive) --------------------------------------------------------------
    def _failed(self, backend: Backend, why: str, *, hard: bool) -> None:
        backend.failures += 1
        backend.last_error = why
        if backend.healthy and (hard or backend.failures >= self._unhealthy_after):
            self.set_health(backend, False, why)

    def _succeeded(self, backend: Backend) -> None:
        if backend.failures:
            backend.failures = 0

    def set_health(self, backend: Backend, healthy: bool, why: str = "") -> None:
        if backend.healthy == healthy:
            return
        backend.healthy = healthy
        backend.since = time.time()
        if healthy:
            backend.failures = 0
        else:
            backend.close_idle()
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

    # ---- feedback, metrics, log --------------------------------------------------------
    def _feedback(self, ctx: _Context) -> None:
        usage = ctx.usage
        if usage is None:
            return
        fb = self.router.observe(ctx.routed, usage)
        child = self._m_feedback.get(fb.reason)
        if child is None:
            child = self._m_feedback[fb.reason] = self.metrics.feedback.labels(fb.reason)
        child.inc()
        prompt = usage.get("prompt_tokens")
        if type(prompt) is int and prompt > 0:
            est = ctx.routed.estimate.prompt_tokens_point
            self.metrics.estimate_error.observe(abs(est - prompt) / prompt)

    def _access(
        self,
        req: Request,
        ctx: _Context | None,
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
        m.backend_waiting.clear()
        m.backend_kv.clear()
        for p in self.pools:
            m.pool_inflight.labels(p.name).set(p.inflight)
            m.pool_queued.labels(p.name).set(p.num_waiting)
            m.pool_saturated.labels(p.name).set(1.0 if p.saturated else 0.0)
            for b in p.backends:
                m.inflight.labels(p.name, b.name).set(b.inflight)
                m.healthy.labels(p.name, b.name).set(1.0 if b.healthy else 0.0)
                m.backend_waiting.labels(p.name, b.name).set(b.waiting)
                m.backend_kv.labels(p.name, b.name).set(b.kv_usage)
        m.learned_ratio.clear()
        m.learned_samples.clear()
        for cat in self.router.estimator.calibrator.categories():
            m.learned_ratio.labels(cat["category"]).set(cat["bytes_per_token"])
            m.learned_samples.labels(cat["category"]).set(cat["samples"])
        m.connections.set(len(self.connections))


def _resolver(
    fut: asyncio.Future[BaseException | None],
) -> Callable[[_Exchange, BaseException | None], None]:
    def done(_: _Exchange, err: BaseException | None) -> None:
        if not fut.done():
            fut.set_result(err)

    return done


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("proxy task failed", exc_info=task.exception())


def _reasons() -> list[Any]:
    from dualpool.policy import Reason

    return list(Reason)
