"""The circuit breaker per backend: half-open trials, outlier ejection, its metrics;
and the /metrics key."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gw_helpers import FakeBackend, GatewayThread, fleet_config
from test_gw_e2e import chat, client, post, raw

from dualpool.gateway._backends import Backend, Pool
from dualpool.gateway._config import PoolConfig

Factory = Callable[..., FakeBackend]
GwFactory = Callable[[dict[str, Any]], GatewayThread]


def test_an_out_backend_is_tried_half_open_when_its_pool_has_nothing_else(
    backend_factory: Factory, gateway_factory: GwFactory
) -> None:
    a = backend_factory(4096)
    b = backend_factory(4096)
    long = backend_factory(32768)
    # No probe in the test's time: only the request path can bring `a` back.
    cfg = fleet_config([a, b], long, health={"interval": 600.0, "metrics_interval": 0})
    cfg["retries"] = {"same_pool": 2, "larger_pools": 0}
    gw = gateway_factory(cfg)
    ba = next(x for x in gw.gateway.pools[0].backends if x.port == a.port)
    a.kill()
    for _ in range(20):
        assert post(gw, chat(200, max_tokens=2))[0] == 200
        if not ba.healthy:
            break
    assert not ba.healthy
    assert gw.run(lambda: ba.breaker) == "half_open"  # out, no ejection time to wait
    a.start()  # listening again, on the same port; no probe will notice it
    b.kill()
    # The pool's only backend in is dead and `a` is out: `a` is tried half-open.
    status, headers, _ = post(gw, chat(200, max_tokens=2))
    assert status == 200 and headers["x-dualpool-pool"] == "short"
    assert ba.healthy and gw.run(lambda: ba.breaker) == "closed"
    metrics = raw(gw, "GET", "/metrics")[2].decode()
    assert f'dualpool_backend_breaker_state{{pool="short",backend="127.0.0.1:{a.port}"}} 0' in (
        metrics
    )
    assert f'dualpool_backend_breaker_state{{pool="short",backend="127.0.0.1:{b.port}"}} 2' in (
        metrics
    )


def _pool(n: int) -> Pool:
    pool = Pool(PoolConfig(name="p", endpoints=()), 0, 4096)
    for i in range(n):
        pool.add(Backend("p", "127.0.0.1", 1000 + i, 4))
    return pool


def _detect(pool: Pool) -> list[tuple[Backend, str, str]]:
    return pool.detect_outliers(
        max_error_rate=0.5, min_requests=10, latency_factor=3.0, latency_floor=0.5
    )


def test_outlier_detection_on_error_rate_and_latency() -> None:
    pool = _pool(3)
    a, b, c = pool.backends
    for _ in range(20):
        a.record(True, 0.1)
        b.record(True, 2.0)  # 20x the others' time to first byte
        c.record(True, 0.1)
    out = _detect(pool)
    assert [(x.port, reason) for x, reason, _ in out] == [(b.port, "latency")]
    for _ in range(20):
        a.record(False)
        b.record(True, 0.1)
        c.record(True, 0.1)
    a.record(True, 0.1)
    assert [(x.port, reason) for x, reason, _ in _detect(pool)] == [(a.port, "error_rate")]
    # Too few answers in the interval: nobody judged; and the counts start again.
    for _ in range(5):
        c.record(False)
    assert _detect(pool) == []
    assert (a.n_ok, a.n_err) == (0, 0)


def test_outlier_detection_never_ejects_the_last_backend_in() -> None:
    pool = _pool(2)
    for x in pool.backends:
        for _ in range(20):
            x.record(False)
    assert len(_detect(pool)) == 1
    single = _pool(1)
    for _ in range(20):
        single.backends[0].record(False)
    assert _detect(single) == []


def test_an_ejected_backend_waits_its_time_then_is_tried_half_open() -> None:
    pool = _pool(2)
    a, b = pool.backends
    a.eject(0.05)
    a.set_healthy(False)
    pool.refresh()
    assert a.breaker == "open"
    assert pool.pick((b,)) is None  # open: not tried even with nothing else
    time.sleep(0.06)
    assert a.breaker == "half_open"
    assert pool.pick((b,)) is a and a.trial
    assert pool.pick((b,)) is None  # one trial at a time
    a.eject(0.05)
    assert a.open_until - time.monotonic() > 0.05  # the second ejection lasts longer


def test_metrics_key(backend_factory: Factory, gateway_factory: GwFactory) -> None:
    short = backend_factory(4096)
    long = backend_factory(32768)
    gw = gateway_factory(fleet_config(short, long, auth={"metrics_key": "m-key"}))
    assert raw(gw, "GET", "/metrics")[0] == 401
    assert raw(gw, "GET", "/metrics", headers={"authorization": "Bearer m-key"})[0] == 200
    assert client(gw).models.list().data  # the API itself needs no key here


def test_non_object_stream_options_is_400_as_vllm(
    backend_factory: Factory, gateway_factory: GwFactory
) -> None:
    short = backend_factory(4096)
    long = backend_factory(32768)
    gw = gateway_factory(fleet_config(short, long))
    for so in ("yes", [], 1):
        status, _, body = post(gw, chat(200, stream=True, stream_options=so))
        assert status == 400 and b"stream_options" in body, body
    assert short.stats()["requests"] == 0  # refused before any backend
    assert post(gw, chat(200, stream=True, stream_options={}))[0] == 200


def test_a_queue_that_cannot_drain_in_time_refuses_at_once() -> None:
    import asyncio

    async def main() -> None:
        pool = Pool(PoolConfig(name="p", endpoints=(), max_concurrency=1, max_queue=100), 0, 4096)
        assert pool.try_acquire()
        # unmeasured: the request waits (and is granted when the slot frees)
        waiter = asyncio.ensure_future(pool.acquire(5.0))
        await asyncio.sleep(0)
        assert pool.num_waiting == 1
        pool.release()
        assert await waiter
        # measured: 2.7 slots/s; within 1 s two waiters can be served, with margin
        pool.drain_rate = 2.7
        pool._window = time.monotonic()
        w1 = asyncio.ensure_future(pool.acquire(1.0))
        w2 = asyncio.ensure_future(pool.acquire(1.0))
        await asyncio.sleep(0)
        assert pool.num_waiting == 2
        w3 = asyncio.ensure_future(pool.acquire(1.0))
        await asyncio.sleep(0)
        assert w3.done() and w3.result() is False  # refused at once, not after 1 s
        assert pool.num_waiting == 2
        pool.refuse_waiters()
        assert await w1 is False and await w2 is False

    asyncio.run(main())
