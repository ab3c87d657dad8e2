"""Backends and pools as the gateway sees them: health, load, connections, slots.

    Pool ── backends ── Backend (a dualpool.http ConnectionPool: idle keep-alive connections)
     │                    ├ inflight (this gateway's), waiting / kv (scraped)
     │                    └ healthy: `failed()` / `succeeded()`, called by the request
     │                      path (passive) and by the prober (active: GET /health)
     ├ inflight / max_concurrency   (gateway-side slots)
     └ waiters (bounded queue of futures, FIFO)

Choosing a backend is least outstanding requests: this gateway's in-flight count
plus the backend's scraped queue (`vllm:num_requests_waiting`), which counts the
other gateways' requests too, by `dualpool.fleet.pick_least_loaded` (the picker the
simulator can model: scan up to 4, else power of two choices). Saturation is
`dualpool.fleet.over_limits`, the simulator's rule too.
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

    def set_healthy(self, healthy: bool) -> bool:
        """Flip the state; False when it already was. Out: idle connections closed."""
        if self.healthy == healthy:
            return False
        self.healthy = healthy
        self.since = time.time()
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
        return healthy[i] if i >= 0 else None

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
        if self.num_waiting >= self.max_queue or max_wait <= 0:
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
                fut.set_result(True)
                return
        self.inflight -= 1
