"""The request path: one client request from the parsed body to the answer, as one plan.

    start(request) ─► auth, bounded JSON parse, Router.route(saturated)
         │  rejected ─► 400 (vLLM's words)
         ▼
    Plan: pools = [routed pool] + larger ones (retries.larger_pools);
          in each pool up to 1 + retries.same_pool backends, least loaded first
         ▼
    step: pool slot (bounded wait, else 429) ─► backend ─► Attempt (a Sink)
         ▼
    classify(attempt, error) ─► Verdict
         DONE     the client has its answer (stream relayed, stream failed, gone)
         FORWARD  a whole answer to forward as it is (2xx, 4xx)
         STALE    a keep-alive connection died before our request reached the backend:
                  the same backend once more on a fresh connection, nobody to blame
         NEXT     this backend failed before the first byte (5xx, reset, timeout,
                  refused): next backend of the pool, then the next pool
         LARGER   vLLM's over-length 400 (dualpool.contract): the next larger pool, once

The first step runs without a task when it can (a free slot, a healthy backend with
an idle connection): the request goes upstream from the client's data callback and
the answer is relayed from the backend's, and `_first_done` finishes it. Anything
else (a connect, a wait for a slot, a retry) continues the same plan in `_run`, a
coroutine, from where the first step left it (`Plan` holds the state).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dualpool.gateway._attempt import (
    Attempt,
    ClientGone,
    Context,
    Draining,
    Plan,
    Verdict,
    classify,
)
from dualpool.gateway._backends import Backend, Pool
from dualpool.gateway._config import GatewayConfig
from dualpool.gateway._errors import error_event
from dualpool.gateway._headers import filter_response_headers
from dualpool.gateway._sse import usage_from_body
from dualpool.gateway._telemetry import Outcome
from dualpool.http import ConnectError, Connection, NotSent, UpstreamError, UpstreamTimeout

if TYPE_CHECKING:
    from dualpool.gateway._gateway import Gateway

__all__ = ["Proxy"]

log = logging.getLogger("dualpool.gateway")


class Proxy:
    """Runs plans for one gateway (its pools, retry limits, metrics)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.loop = gw.loop
        self.metrics = gw.metrics
        self._pool_headers: dict[str, tuple[bytes, bytes]] = {}
        self._m_pool: dict[str, tuple[Any, Any]] = {}

    def configure(self, cfg: GatewayConfig, pools: list[Pool]) -> None:
        """The settings the plans read (at start and on reload)."""
        self.max_wait = cfg.backpressure.max_wait
        self.same_pool = cfg.retries.same_pool
        self.larger = cfg.retries.larger_pools
        self.unhealthy_after = cfg.health.unhealthy_after
        self.connect_timeout = cfg.timeouts.connect
        # Kept for removed pools: their requests in flight still answer.
        for p in pools:
            self._pool_headers[p.name] = (b"x-dualpool-pool", p.name.encode())

    def plan_for(self, ctx: Context) -> Plan:
        """The routed pool, then up to retries.larger_pools larger ones (policy.fallbacks)."""
        d = ctx.routed.decision
        served = ctx.served
        pools = served.pools
        plan = [pools[d.pool]]
        plan += [pools[i] for i in served.router.policy.fallbacks(d)[: self.larger]]
        return Plan(plan)

    # ---- the first step, without a task -----------------------------------------------
    def start(self, ctx: Context) -> Any:
        pool = ctx.served.pools[ctx.routed.decision.pool]
        if pool.inflight < pool.max_concurrency and not pool.num_waiting and pool.healthy:
            backend = pool.pick()
            if backend is not None:
                upstream = backend.take_idle()
                if upstream is not None:
                    pool.inflight += 1  # the slot: as try_acquire would
                    ctx.pool = pool
                    ctx.backend = backend
                    ctx.attempts = 1
                    backend.inflight += 1
                    att = Attempt(self.gw, ctx, pool, backend, upstream, self._first_done)
                    try:
                        att.send()
                        return None
                    except NotSent:
                        backend.inflight -= 1
                        pool.release()
        ctx.plan = self.plan_for(ctx)
        return self._run(ctx)

    def _begin(
        self,
        ctx: Context,
        pool: Pool,
        backend: Backend,
        upstream: Connection,
        done: Callable[[Attempt, UpstreamError | None], None],
    ) -> Attempt:
        ctx.pool = pool
        ctx.backend = backend
        ctx.attempts += 1
        backend.inflight += 1
        return Attempt(self.gw, ctx, pool, backend, upstream, done)

    def _first_done(self, att: Attempt, err: UpstreamError | None) -> None:
        ctx = att.ctx
        att.backend.inflight -= 1
        att.pool.release()
        # The plan is made only when the first step does not settle the request.
        plan: Plan | None = None
        larger: range = range(0)
        if err is None and att.status == 400:
            plan = ctx.plan = self.plan_for(ctx)
            larger = range(1, len(plan.pools))
        verdict = classify(att, err, larger)
        if verdict is not Verdict.DONE and verdict is not Verdict.FORWARD and plan is None:
            plan = ctx.plan = self.plan_for(ctx)
        if self._conclude(ctx, plan, att, err, verdict):
            self.gw.finish(ctx)
            return
        assert plan is not None
        if verdict is Verdict.LARGER:
            plan.step += 1
        elif verdict is not Verdict.STALE:
            plan.tried.append(att.backend)
        task = self.loop.create_task(self._run(ctx))
        task.add_done_callback(_log_failure)

    # ---- the plan, as a coroutine ---------------------------------------------------------
    async def _run(self, ctx: Context) -> None:
        try:
            await self._steps(ctx)
        except Exception:
            log.exception("internal error while proxying")
            ctx.outcome = Outcome.UPSTREAM_ERROR
            if ctx.first_byte_sent:
                ctx.ex.keep_alive = False  # our own bug: trust nothing more on it
                self._end_stream_with(ctx, 500, "internal error in the gateway")
            elif not ctx.ex.done:
                self.gw.error(ctx.ex, 500, "internal error in the gateway")
        self.gw.finish(ctx)

    async def _steps(self, ctx: Context) -> None:
        plan = ctx.plan
        assert plan is not None
        while plan.step < len(plan.pools):
            pool = plan.pools[plan.step]
            if pool.available:
                if not pool.try_acquire() and not await pool.acquire(self.max_wait):
                    if self.gw.cut_off:
                        self._draining(ctx)
                        return
                    if plan.last_answer is None and plan.last_error is None:
                        # Every pool that could serve it first is full: tell the client when.
                        self._overloaded(ctx, pool)
                        return
                else:
                    try:
                        if await self._in_pool(ctx, plan, pool):
                            return
                    finally:
                        pool.release()
            plan.step += 1
            plan.tried = []
        self._give_up(ctx, plan)

    async def _in_pool(self, ctx: Context, plan: Plan, pool: Pool) -> bool:
        """Backends of one pool, holding its slot; True when the client has its answer."""
        larger = range(plan.step + 1, len(plan.pools))
        while len(plan.tried) < 1 + self.same_pool:
            if ctx.ex.done or not ctx.ex.connected:
                ctx.outcome = Outcome.CLIENT_CLOSED
                return True
            if self.gw.cut_off:
                self._draining(ctx)
                return True
            backend = pool.pick(tuple(plan.tried))
            if backend is None:
                return False
            if plan.last_answer is not None or plan.last_error is not None:
                cause = "misroute" if ctx.misrouted else "error"
                self.metrics.retries.labels(pool.name, cause).inc()
            att, err, verdict = await self._attempt(ctx, pool, backend, larger)
            if self._conclude(ctx, plan, att, err, verdict):
                return True
            if verdict is Verdict.LARGER:
                return False
            plan.tried.append(backend)
        return False

    async def _attempt(
        self, ctx: Context, pool: Pool, backend: Backend, larger: range
    ) -> tuple[Attempt | None, UpstreamError | None, Verdict]:
        """One backend: an idle connection, else a fresh one; a stale one retried once."""
        for fresh in (False, True):
            upstream = None if fresh else backend.take_idle()
            if upstream is None:
                try:
                    upstream = await backend.connect(self.connect_timeout)
                except ConnectError as exc:
                    backend.trial = False
                    ctx.attempts += 1
                    ctx.backend = backend
                    return None, exc, Verdict.NEXT
            fut: asyncio.Future[UpstreamError | None] = self.loop.create_future()
            att = self._begin(ctx, pool, backend, upstream, _resolver(fut))
            try:
                try:
                    att.send()
                except NotSent as exc:
                    err: UpstreamError | None = exc
                else:
                    err = await fut
            finally:
                backend.inflight -= 1
            verdict = classify(att, err, larger)
            if verdict is not Verdict.STALE or fresh:
                backend.trial = False  # a half-open trial ends with its attempt
            if verdict is Verdict.STALE and not fresh:
                continue
            if verdict is Verdict.STALE:
                verdict = Verdict.NEXT
            return att, err, verdict
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- what a verdict does --------------------------------------------------------------
    def _conclude(
        self,
        ctx: Context,
        plan: Plan | None,
        att: Attempt | None,
        err: UpstreamError | None,
        verdict: Verdict,
    ) -> bool:
        """Act on an attempt's verdict; True when the client has its answer."""
        backend = att.backend if att is not None else ctx.backend
        if verdict is Verdict.DONE:
            assert att is not None
            if err is None:
                self._stream_done(ctx, att)
            elif isinstance(err, ClientGone):
                ctx.outcome = Outcome.CLIENT_CLOSED
                ctx.ex.abort()
            elif isinstance(err, Draining):
                self._draining(ctx)
            else:
                self._stream_failed(ctx, err)
            return True
        if verdict is Verdict.FORWARD:
            assert att is not None
            if att.status < 500 and backend is not None:
                self.gw.succeeded(backend)
                backend.record(True, att.t_first - att.t_send if att.t_first else 0.0)
            self._record(att)
            self._forward(ctx, att)
            return True
        assert plan is not None  # made for every verdict that does not end the request
        if verdict is Verdict.LARGER:
            assert att is not None
            ctx.misrouted = True
            self.metrics.misroutes.labels(att.pool.name).inc()
            plan.last_answer, plan.last_error = att, None
            return False
        if verdict is Verdict.NEXT and backend is not None:
            if err is None:
                assert att is not None
                self.failed(backend, f"HTTP {att.status}", hard=False)
                plan.last_answer, plan.last_error = att, None
            else:
                self.failed(backend, str(err) or type(err).__name__, hard=type(err) is ConnectError)
                plan.last_error, plan.last_answer = err, None
        return False

    def failed(self, backend: Backend, why: str, *, hard: bool) -> None:
        backend.record(False)
        if backend.failed(why, hard=hard, unhealthy_after=self.unhealthy_after):
            self.gw.set_health(backend, False, why)

    def _give_up(self, ctx: Context, plan: Plan) -> None:
        if type(plan.last_error) is ConnectError and not any(p.healthy for p in plan.pools):
            plan.last_error = None  # only half-open trials, refused: nothing is in (503)
        if plan.last_answer is not None:
            self._forward(ctx, plan.last_answer)
        elif plan.last_error is not None:
            exc = plan.last_error
            timeout = isinstance(exc, UpstreamTimeout)
            ctx.status = 504 if timeout else 502
            ctx.outcome = Outcome.TIMEOUT if timeout else Outcome.UPSTREAM_ERROR
            self.gw.error(ctx.ex, ctx.status, f"no backend could answer: {exc}")
        else:
            ctx.status = 503
            ctx.outcome = Outcome.UNAVAILABLE
            self.metrics.rejections.labels("no_healthy_backend").inc()
            self.gw.error(
                ctx.ex,
                503,
                f"no healthy backend in pool {plan.pools[0].name!r} or a larger one",
                headers=self.gw.retry_after,
            )

    def _overloaded(self, ctx: Context, pool: Pool) -> None:
        ctx.status = 429
        ctx.outcome = Outcome.OVERLOADED
        ctx.pool = pool
        self.metrics.rejections.labels("overloaded").inc()
        self.gw.error(
            ctx.ex,
            429,
            f"pool {pool.name!r} is at capacity ({pool.max_concurrency} in flight, "
            f"{pool.num_waiting} waiting); retry later",
            headers=self.gw.retry_after,
        )

    def _draining(self, ctx: Context) -> None:
        ctx.outcome = Outcome.UNAVAILABLE
        if ctx.first_byte_sent:
            self._end_stream_with(ctx, 503, "the gateway is shutting down")
        else:
            ctx.status = 503
            self.gw.error(ctx.ex, 503, "the gateway is shutting down", headers=self.gw.retry_after)

    def _record(self, att: Attempt) -> None:
        name = att.pool.name
        pm = self._m_pool.get(name)
        if pm is None:
            m = self.metrics
            pm = self._m_pool[name] = (m.ttft.labels(name), m.latency.labels(name))
        if att.t_first:
            pm[0].observe(att.t_first - att.t_send)
        pm[1].observe(self.loop.time() - att.t_send)

    def _stream_done(self, ctx: Context, att: Attempt) -> None:
        self.gw.succeeded(att.backend)
        att.backend.record(True, att.t_first - att.t_send if att.t_first else 0.0)
        self._record(att)
        relay = att.relay
        assert relay is not None
        ctx.usage = relay.usage
        ctx.status = 200
        ctx.outcome = Outcome.OK
        ctx.ex.end(relay.flush())

    def _forward(self, ctx: Context, att: Attempt) -> None:
        body = att.body
        status = ctx.status = att.status
        if 200 <= status < 300:
            ctx.outcome = Outcome.OK
            ctx.usage = usage_from_body(body)
        elif status < 500:
            ctx.outcome = Outcome.CLIENT_ERROR
        else:
            ctx.outcome = Outcome.UPSTREAM_ERROR
        headers = filter_response_headers(att.headers)
        headers.append(self._pool_headers[att.pool.name])
        ctx.ex.send(status, body, headers, None)

    def _stream_failed(self, ctx: Context, exc: UpstreamError) -> None:
        """After the first byte: end the stream with an error event, never hang."""
        ctx.status = 200
        ctx.outcome = Outcome.STREAM_ERROR
        msg = f"the backend failed mid-stream: {exc or type(exc).__name__}"
        if ctx.backend is not None:
            self.failed(ctx.backend, msg, hard=False)
        self._end_stream_with(ctx, 504 if isinstance(exc, UpstreamTimeout) else 502, msg)

    def _end_stream_with(self, ctx: Context, status: int, message: str) -> None:
        """The error event and the chunked end: the framing is whole, so the client's
        connection stays open (closing it would race the client's next request on it,
        which the client could only see as a reset), except when shutting down."""
        ex = ctx.ex
        if self.gw.draining:
            ex.keep_alive = False
        ex.end(error_event(status, message))


def _resolver(
    fut: asyncio.Future[UpstreamError | None],
) -> Callable[[Attempt, UpstreamError | None], None]:
    def done(_: Attempt, err: UpstreamError | None) -> None:
        if not fut.done():
            fut.set_result(err)

    return done


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("proxy task failed", exc_info=task.exception())
