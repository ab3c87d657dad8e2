"""One attempt on one backend, and what its end means: `Attempt` and `classify`.

An `Attempt` is the Sink of one upstream exchange: it relays a stream to the
client chunk by chunk as the backend's bytes arrive (same event-loop turn), or
collects a whole answer for the plan to judge. `classify` turns its end into a
`Verdict` for the plan in `_proxy.py`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dualpool.contract import parse_over_length
from dualpool.fleet import misroute_target
from dualpool.gateway._backends import Backend, Pool
from dualpool.gateway._headers import filter_response_headers
from dualpool.gateway._sse import SseRelay
from dualpool.http import (
    ClosedBeforeResponse,
    Connection,
    Exchange,
    NotSent,
    Request,
    ResponseTooLarge,
    UpstreamError,
    UpstreamTimeout,
)
from dualpool.router import RoutedRequest

if TYPE_CHECKING:
    from dualpool.gateway._gateway import Gateway
    from dualpool.gateway._models import Served

__all__ = ["Attempt", "ClientGone", "Context", "Draining", "Plan", "Verdict", "classify"]

# A non-streamed answer larger than this is refused (memory stays bounded).
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class ClientGone(UpstreamError):
    """The client closed its connection while its request was being answered."""


class Draining(UpstreamError):
    """The gateway's drain deadline passed with the request still in flight."""


class Verdict(enum.Enum):
    DONE = "done"
    FORWARD = "forward"
    STALE = "stale"
    NEXT = "next"
    LARGER = "larger"


class Plan:
    """Where a request is in its retry plan over (pool, backend) pairs."""

    __slots__ = ("last_answer", "last_error", "pools", "step", "tried")

    def __init__(self, pools: list[Pool]) -> None:
        self.pools = pools
        self.step = 0  # index into pools
        self.tried: list[Backend] = []  # backends tried in pools[step]
        self.last_answer: Attempt | None = None  # the last whole answer (5xx, misroute)
        self.last_error: UpstreamError | None = None


class Context:
    """One client request across its attempts."""

    __slots__ = (
        "attempts",
        "backend",
        "ex",
        "first_byte_sent",
        "misrouted",
        "outcome",
        "payload",
        "plan",
        "pool",
        "req",
        "routed",
        "served",
        "status",
        "stream",
        "strip",
        "upstream_head",
        "usage",
    )

    def __init__(
        self,
        req: Request,
        ex: Exchange,
        routed: RoutedRequest,
        stream: bool,
        strip: bool,
        served: Served,
    ) -> None:
        self.req = req
        # The model it was routed for: its router and pools, kept across a reload.
        self.served = served
        self.ex = ex
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
        self.plan: Plan | None = None


class Attempt:
    """One try on one backend: the Sink of its upstream exchange.

    When it ends it calls `done(self, error)`. Timeouts are checked by
    `Gateway.sweep_timeouts` (one periodic timer for all attempts)."""

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
        ctx: Context,
        pool: Pool,
        backend: Backend,
        upstream: Connection,
        done: Callable[[Attempt, UpstreamError | None], None],
    ) -> None:
        self.gw = gw
        self.loop = loop = gw.loop
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
        self.t_send = self.last = loop.time()
        self.t_first = 0.0
        self.timeout = gw.first_byte_timeout
        self.idle_timeout = gw.idle_timeout

    def send(self) -> None:
        """Write the request upstream; raises NotSent (nothing else happened then)."""
        ctx = self.ctx
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
        self.gw.live.add(self)
        ctx.ex.on_disconnect = self.client_lost

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
            ex = ctx.ex
            hdrs = filter_response_headers(headers)
            hdrs.append((b"x-dualpool-pool", self.pool.name.encode()))
            ex.start_stream(200, None, hdrs)
            ctx.first_byte_sent = True
            up = self.upstream
            ex.on_pause = up.pause_reading
            ex.on_resume = up.resume_reading
            if ex.write_paused:
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
                self.ctx.ex.write(out)
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

    def on_error(self, exc: UpstreamError) -> None:
        self._end(exc)

    # ---- timeouts, the client, the drain -----------------------------------------------
    def check_timeout(self, now: float) -> None:
        if now - self.last >= self.timeout:
            self.upstream.detach()
            what = "first byte" if not self.status else "next byte"
            self._end(
                UpstreamTimeout(
                    f"no {what} from {self.backend.name} in {self.timeout:g}s",
                    first_byte=not self.status,
                )
            )

    def client_lost(self) -> None:
        # Closing the upstream connection makes vLLM abort the generation.
        self.upstream.detach()
        self._end(ClientGone("the client closed its connection"))

    def cut(self) -> None:
        self.upstream.detach()
        self._end(Draining("the gateway is shutting down"))

    def _end(self, exc: UpstreamError | None) -> None:
        if not self.ended:
            self.ended = True
            self.gw.live.discard(self)
            self.ctx.ex.on_disconnect = None
            self.done(self, exc)

    @property
    def body(self) -> bytes:
        parts = self.parts
        return parts[0] if len(parts) == 1 else b"".join(parts)


def classify(att: Attempt, err: UpstreamError | None, larger: Sequence[int]) -> Verdict:
    """What one attempt's end means for the request (see `_proxy.py`'s docstring).

    `larger`: the plan's pools after this one (dualpool.fleet's misroute rule)."""
    ctx = att.ctx
    if err is None:
        if att.relaying:
            return Verdict.DONE
        if att.status >= 500:
            return Verdict.NEXT
        if (
            att.status == 400
            and misroute_target(larger, ctx.misrouted) >= 0
            and parse_over_length(att.status, att.body) is not None
        ):
            return Verdict.LARGER
        return Verdict.FORWARD
    if isinstance(err, (ClientGone, Draining)) or ctx.first_byte_sent:
        return Verdict.DONE
    if isinstance(err, NotSent) or (isinstance(err, ClosedBeforeResponse) and err.reused):
        return Verdict.STALE
    return Verdict.NEXT
