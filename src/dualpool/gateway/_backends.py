"""Backends and pools as the gateway sees them: health, load, connections, slots.

    Pool ── backends ── Backend (a dualpool.http ConnectionPool: idle keep-alive connections)
     │                    ├ inflight (this gateway's), waiting / kv (scraped)
     │                    └ healthy: `failed()` / `succeeded()`, called by the request
     │                      path (passive) and by the prober (active: GET /health);
     │                      the circuit breaker below is the same bookkeeping
     ├ inflight / max_concurrency   (gateway-side slots)
     └ waiters (bounded queue of futures, FIFO)

Choosing a backend is least outstanding requests: this gateway's in-flight count
plus the backend's scraped queue (`vllm:num_requests_waiting`), which counts the
other gateways' requests too, by `dualpool.fleet.pick_least_loaded` (the picker the
simulator can model: scan up to 4, else power of two choices). Saturation is
`dualpool.fleet.over_limits`, the simulator's rule too.

The circuit breaker, per backend, is the health state seen as Envoy sees it:

    closed     healthy: in the pool's pick
    open       taken out (consecutive failures, a refused connect, a failed probe, or an
               outlier ejection); not picked, until `open_until`
    half-open  out, past `open_until`, and tried by one request when its pool has nothing
               else in (`Pool.pick`): success puts it back in at once, failure keeps it out

Outlier detection (`Pool.detect_outliers`, every `outlier_interval` seconds, as Envoy's
failure-percentage and a latency rule): a backend whose error rate over the interval
reaches `max_error_rate`, or whose mean time to first byte exceeds `latency_factor` x
the pool's median (and `latency_floor`), is ejected for `ejection_time` x its number
of ejections (at most 300 s); never the pool's last backend in.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from dualpool.fleet import over_limits, pick_least_loaded
from dualpool.gateway._config import PoolConfig
from dualpool.http import ConnectionPool

__all__ = ["Backend", "Pool"]


class Backend(ConnectionPool):
    """One vLLM server: its connections, load and health."""

    def __init__(self, pool: str, host: str, port: int, max_idle: int) -> None:
        super().__init__(host, port, max_idle=max_idle)
        self.pool = pool
        self.healthy = True
        self.removed = False
        self.inflight = 0
        self.failures = 0
        self.waiting = 0.0
        self.kv_usage = 0.0
        # Scraped load passes the pool's limits.
        self.saturated = False
        self.last_error = ""
        self.since = time.time()
        # Circuit breaker (see the module docstring); times on time.monotonic().
        self.open_until = 0.0
        self.trial = False  # a half-open trial request is in flight
        self.ejections = 0
        # This outlier interval's outcomes, by the request path.
        self.n_ok = 0
        self.n_err = 0
        self.latency_sum = 0.0

    def observe_load(self, waiting: float, kv_usage: float, cfg: PoolConfig) -> None:
        """Scraped load; saturated by the fleet's one rule."""
        self.waiting = waiting
        self.kv_usage = kv_usage
        self.saturated = over_limits(waiting, kv_usage, cfg.max_waiting, cfg.max_kv_usage)

    # ---- health bookkeeping: the request path and the prober both report here --------
    def failed(self, why: str, *, hard: bool, unhealthy_after: int) -> bool:
        """Count a failure; True when the backend should now be taken out.

        `hard`: nothing listens (connection refused): out at once."""
        self.failures += 1
        self.last_error = why
        return self.healthy and (hard or self.failures >= unhealthy_after)

    def succeeded(self) -> None:
        if self.failures:
            self.failures = 0

    def record(self, ok: bool, latency: float = 0.0) -> None:
        """One request's outcome for outlier detection (error, or time to first byte)."""
        if ok:
            self.n_ok += 1
            self.latency_sum += latency
        else:
            self.n_err += 1

    @property
    def breaker(self) -> str:
        if self.healthy:
            return "closed"
        if self.trial or time.monotonic() >= self.open_until:
            return "half_open"
        return "open"

    def eject(self, seconds: float) -> None:
        """An outlier: open for `seconds` x its ejections so far (at most 300 s)."""
        self.ejections += 1
        self.open_until = time.monotonic() + min(300.0, seconds * self.ejections)

    def set_healthy(self, healthy: bool) -> bool:
        """Flip the state; False when it already was. Out: idle connections closed."""
        if self.healthy == healthy:
            return False
        self.healthy = healthy
        self.since = time.time()
        self.trial = False
        if healthy:
            self.failures = 0
        else:
            self.close()
        return True

    def close_idle(self) -> None:
        self.close()

    def state(self) -> dict[str, object]:
        return {
            "backend": self.name,
            "healthy": self.healthy,
            "breaker": self.breaker,
            "ejections": self.ejections,
            "inflight": self.inflight,
            "failures": self.failures,
            "waiting": self.waiting,
            "kv_cache_usage": self.kv_usage,
            "saturated": self.saturated,
            "last_error": self.last_error or None,
            "since": self.since,
            "idle_connections": len(self.idle),
        }


class Pool:
    """A pool's backends and this gateway's slots for it."""

    def __init__(self, cfg: PoolConfig, index: int, max_model_len: int) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.index = index
        self.max_model_len = max_model_len
        self.backends: list[Backend] = []
        self.healthy: list[Backend] = []
        self.inflight = 0
        self.max_concurrency = cfg.max_concurrency
        self.max_queue = cfg.max_queue
        self.waiters: deque[asyncio.Future[bool]] = deque()
        self.num_waiting = 0
        # Slots freed per second (EWMA over windows of >= 0.25 s): how fast the queue
        # drains, so a request that could not get a slot in time is refused at once.
        self.drain_rate = -1.0  # not measured yet
        self._freed = 0
        self._window = time.monotonic()
        # Every healthy backend is over its scraped limits.
        self.scrape_saturated = False
        auth = cfg.backend_api_key
        self.auth_header = b"authorization: Bearer " + auth.encode() + b"\r\n" if auth else b""

    # ---- membership and health ------------------------------------------------------
    def refresh(self) -> None:
        """Recompute the healthy list and the scraped saturation (on any change)."""
        self.healthy = [b for b in self.backends if b.healthy and not b.removed]
        self.scrape_saturated = bool(self.healthy) and all(b.saturated for b in self.healthy)

    def add(self, backend: Backend) -> None:
        self.backends.append(backend)
        self.refresh()

    def remove(self, backend: Backend) -> None:
        backend.removed = True
        backend.closed = True  # connections in use close when released
        backend.close()
        self.backends = [b for b in self.backends if b is not backend]
        self.refresh()

    @property
    def saturated(self) -> bool:
        """The policy's view: full here, or every backend busy, or none healthy."""
        return self.inflight >= self.max_concurrency or self.scrape_saturated or not self.healthy

    # ---- choosing a backend -------------------------------------------------------
    def pick(self, exclude: tuple[Backend, ...] = ()) -> Backend | None:
        """The least loaded healthy backend not in `exclude` (dualpool.fleet's picker)."""
        healthy = self.healthy
        if len(healthy) == 1 and not exclude:
            return healthy[0]  # the picker's answer for one candidate, without the call
        skip = [i for i, b in enumerate(healthy) if b in exclude] if exclude else ()
        i = pick_least_loaded(len(healthy), self._load, skip)
        return healthy[i] if i >= 0 else self.half_open(exclude)

    def half_open(self, exclude: tuple[Backend, ...] = ()) -> Backend | None:
        """Nothing in to pick: one trial on an out backend past its open time (the
        longest out first), so a backend that is back is not left out until the next
        probe. The caller clears `trial` when the attempt ends."""
        now = time.monotonic()
        best: Backend | None = None
        for b in self.backends:
            if b.healthy or b.trial or b in exclude or now < b.open_until:
                continue
            if best is None or b.since < best.since:
                best = b
        if best is not None:
            best.trial = True
        return best

    @property
    def available(self) -> bool:
        """Anything to try: a backend in, or one that may be tried half-open."""
        if self.healthy:
            return True
        now = time.monotonic()
        return any(not b.trial and now >= b.open_until for b in self.backends)

    def detect_outliers(
        self,
        *,
        max_error_rate: float,
        min_requests: int,
        latency_factor: float,
        latency_floor: float,
    ) -> list[tuple[Backend, str, str]]:
        """This interval's outliers (backend, reason, why) among the backends in; the
        interval's counts start again. Never more than all but one backend in."""
        scored: list[tuple[Backend, float, float]] = []  # (backend, error rate, mean ttfb)
        for b in self.healthy:
            n = b.n_ok + b.n_err
            if n >= min_requests:
                mean = b.latency_sum / b.n_ok if b.n_ok else 0.0
                scored.append((b, b.n_err / n, mean))
        for b in self.backends:
            b.n_ok = b.n_err = 0
            b.latency_sum = 0.0
        means = sorted(m for _, _, m in scored if m > 0)
        median = means[(len(means) - 1) // 2] if means else 0.0  # the lower median
        out: list[tuple[Backend, str, str]] = []
        room = len(self.healthy) - 1
        for b, rate, mean in sorted(scored, key=lambda t: -t[1]):
            if len(out) >= room:
                break
            if rate >= max_error_rate:
                out.append((b, "error_rate", f"error rate {rate:.0%} over the interval"))
            elif len(means) >= 2 and mean > latency_floor and mean > latency_factor * median:
                out.append(
                    (b, "latency", f"mean first byte {mean:.3f}s vs pool median {median:.3f}s")
                )
        return out

    def _load(self, i: int) -> float:
        b = self.healthy[i]
        return b.inflight + b.waiting

    # ---- slots -------------------------------------------------------------------------
    def try_acquire(self) -> bool:
        if self.inflight < self.max_concurrency:
            self.inflight += 1
            return True
        return False

    async def acquire(self, max_wait: float) -> bool:
        """Wait (FIFO, bounded) for a slot; False when the queue is full or time is up."""
        if self.inflight < self.max_concurrency and not self.num_waiting:
            self.inflight += 1
            return True
        if self.num_waiting >= self.max_queue or max_wait <= 0 or not self.can_drain(max_wait):
            return False
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        waiters = self.waiters
        if len(waiters) > 2 * self.max_queue + 16:
            # Expired futures stay queued until a release pops them; bound the deque.
            self.waiters = waiters = deque(f for f in waiters if not f.done())
        waiters.append(fut)
        self.num_waiting += 1
        timer = loop.call_later(max_wait, self._expire, fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.cancelled():
                self.num_waiting -= 1
            elif fut.result():
                self.release()  # granted, but the request is gone: pass the slot on
            raise
        finally:
            timer.cancel()

    def can_drain(self, max_wait: float) -> bool:
        """Could one more waiter get a slot within `max_wait` at the measured rate?"""
        now = time.monotonic()
        elapsed = now - self._window
        if elapsed > 4.0 + 4 * max_wait:
            # Stale (the pool was not full meanwhile): measure again from now.
            self.drain_rate = -1.0
            self._freed = 0
            self._window = now
        elif elapsed >= 0.25:
            rate = self._freed / elapsed
            self.drain_rate = rate if self.drain_rate < 0 else 0.5 * (self.drain_rate + rate)
            self._freed = 0
            self._window = now
        if self.drain_rate < 0:
            return True
        # A waiter at the very end of the window would time out on any jitter (and
        # then wait the whole max_wait for its 429): keep a quarter as margin.
        return (self.num_waiting + 1) <= 0.75 * self.drain_rate * max_wait

    def refuse_waiters(self) -> None:
        """Every request waiting for a slot gets none now (the drain deadline)."""
        for fut in self.waiters:
            self._expire(fut)
        self.waiters.clear()

    def _expire(self, fut: asyncio.Future[bool]) -> None:
        if not fut.done():
            self.num_waiting -= 1
            fut.set_result(False)

    def release(self) -> None:
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                # The slot passes to the waiter: inflight stays the same.
                self.num_waiting -= 1
                self._freed += 1
                fut.set_result(True)
                return
        if self.inflight >= self.max_concurrency:
            self._freed += 1  # counted at capacity only: the rate a full pool drains
        self.inflight -= 1
