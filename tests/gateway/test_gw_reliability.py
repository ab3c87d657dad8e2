"""Brief versions of the reliability benchmarks (benchmarks/chaos.py, fuzz.py, drain.py):
a backend killed and a fault proxy while requests run, hypothesis fuzz of bodies and raw
HTTP, and a drain with many requests in flight. Each runs in seconds."""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gw_helpers import FakeBackend, GatewayThread, fleet_config
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from test_gw_e2e import chat

from dualpool.testing.faultproxy import FaultProxy, Faults
from dualpool.testing.strategies import raw_http, request_case

Factory = Callable[..., FakeBackend]
GwFactory = Callable[[dict[str, Any]], GatewayThread]


@pytest.fixture
def proxy_factory() -> Iterator[Callable[[int, Faults], FaultProxy]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    proxies: list[FaultProxy] = []

    def make(port: int, faults: Faults) -> FaultProxy:
        p = FaultProxy(("127.0.0.1", port), faults, seed=len(proxies))
        asyncio.run_coroutine_threadsafe(p.start(), loop).result(10)
        proxies.append(p)
        return p

    yield make
    for p in proxies:
        asyncio.run_coroutine_threadsafe(p.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def ask(port: int, body: dict[str, Any]) -> str:
    """One request on its own connection; how it ended: ok, stream_error, HTTP status, lost."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            "POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"}
        )
        r = conn.getresponse()
        data = r.read()  # IncompleteRead when the framing is cut
    except (OSError, http.client.HTTPException) as exc:
        return f"lost:{type(exc).__name__}"
    finally:
        conn.close()
    if r.status != 200:
        return str(r.status)
    if not body.get("stream"):
        return "ok" if json.loads(data)["choices"] else "lost:empty"
    if not data.rstrip().endswith(b"data: [DONE]"):
        return "lost:no-done"
    return "stream_error" if b'data: {"error"' in data else "ok"


def test_chaos_brief_nothing_lost_no_5xx(
    backend_factory: Factory,
    gateway_factory: GwFactory,
    proxy_factory: Callable[[int, Faults], FaultProxy],
) -> None:
    a = backend_factory(4096, output_tokens=6, token_delay=0.002)
    b = backend_factory(4096, output_tokens=6, token_delay=0.002)
    long = backend_factory(32768)
    faults = Faults(
        reset=0.05, reset_mid=0.05, half_close=0.03, garbage=0.03, delay=0.05, delay_s=0.2
    )
    proxy = proxy_factory(b.port, faults)
    cfg = fleet_config([a, b], long, retries={"same_pool": 2, "larger_pools": 1})
    cfg["pools"][0]["endpoints"] = [a.url, f"http://127.0.0.1:{proxy.port}"]
    gw = gateway_factory(cfg)
    bodies = [chat(300, max_tokens=6, stream=bool(i % 2)) for i in range(300)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(ask, gw.port, body) for body in bodies]
        futures[100].result(30)
        a.kill()  # SIGKILL mid-run, back on the same port a moment later
        futures[160].result(30)
        a.start()
        results = [f.result(60) for f in futures]
    assert not [r for r in results if r.startswith("lost")], results
    assert set(results) <= {"ok", "stream_error"}, sorted(set(results))  # no 5xx
    assert results.count("ok") >= 250
    assert sum(proxy.counts.values()) >= 5  # the proxy did inject faults


def test_fuzz_brief_no_5xx_of_the_gateways_own(
    backend_factory: Factory, gateway_factory: GwFactory
) -> None:
    short = backend_factory(4096)
    long = backend_factory(32768)
    gw = gateway_factory(fleet_config(short, long))
    bad: list[str] = []

    @settings(
        max_examples=250,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.one_of(request_case(), request_case(), raw_http().map(lambda r: (b"", r))))
    def one(case: tuple[bytes, bytes]) -> None:
        path, data = case
        if path:
            data = (
                b"POST " + path + b" HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n" % len(data) + data
            )
        with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as s:
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            answer = b""
            try:
                while chunk := s.recv(65536):
                    answer += chunk
            except OSError:
                pass
        if answer:
            status = int(answer.split(b" ", 2)[1])
            if status >= 500 and status not in (501, 505):
                bad.append(f"{status} {answer[-200:]!r} to {data[:200]!r}")

    one()
    assert not bad, bad[:3]
    assert json.loads(ask_models(gw.port))["data"]  # still serving


def ask_models(port: int) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/v1/models")
        return conn.getresponse().read()
    finally:
        conn.close()


def test_drain_brief_every_request_completes_or_gets_a_clean_error(
    backend_factory: Factory,
) -> None:
    # streams go short (5 s of tokens); whole answers go long (held 5 s before the head)
    short = backend_factory(4096, output_tokens=100, token_delay=0.05)
    long = backend_factory(32768)
    long.control(delay=5.0)
    gw = GatewayThread(fleet_config(short, long, timeouts={"drain": 0.5}))
    bodies = [chat(200, max_tokens=100, stream=True) for _ in range(6)]
    bodies += [{k: v for k, v in chat(200).items() if k != "max_tokens"} for _ in range(6)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(ask, gw.port, body) for body in bodies]
        assert _wait(lambda: gw.run(lambda: len(gw.gateway.live)) == 12)
        gw.stop()  # SIGTERM's path: drain, then cut at the deadline
        results = [f.result(30) for f in futures]
    # non-streamed: a 503 JSON error; streamed: an error event, [DONE], the chunked end
    assert sorted(results) == ["503"] * 6 + ["stream_error"] * 6, results


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False
