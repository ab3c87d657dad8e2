"""End to end: the openai client through a real gateway to fake vLLM backend processes."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest
from gw_helpers import FakeBackend, GatewayThread, fleet_config

Factory = Callable[..., FakeBackend]
GwFactory = Callable[[dict[str, Any]], GatewayThread]


def client(gw: GatewayThread, key: str = "none", timeout: float = 20) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=timeout)


def chat(n_bytes: int, max_tokens: int = 16, **extra: Any) -> dict[str, Any]:
    words = ("lorem ipsum dolor sit amet consectetur adipiscing elit " * (n_bytes // 50 + 1))[
        :n_bytes
    ]
    return {
        "model": "fake-model",
        "messages": [{"role": "user", "content": words}],
        "max_tokens": max_tokens,
        **extra,
    }


def raw(
    gw: GatewayThread,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def post(
    gw: GatewayThread, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return raw(
        gw,
        "POST",
        "/v1/chat/completions",
        data,
        {"content-type": "application/json", **(headers or {})},
    )


def direct(backend: FakeBackend, body: dict[str, Any]) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=20)
    conn.request(
        "POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"}
    )
    data = conn.getresponse().read()
    conn.close()
    return data


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


@pytest.fixture
def fleet(
    backend_factory: Factory, gateway_factory: GwFactory
) -> tuple[FakeBackend, FakeBackend, GatewayThread]:
    short = backend_factory(4096, bytes_per_token=3.0)
    long = backend_factory(32768, bytes_per_token=3.0)
    gw = gateway_factory(fleet_config(short, long))
    return short, long, gw


# ---- routing, feedback, streaming -----------------------------------------------------


def test_short_lands_short_long_lands_long_and_calibrator_converges(
    fleet: tuple[FakeBackend, FakeBackend, GatewayThread],
) -> None:
    short, long, gw = fleet
    c = client(gw)
    r = c.chat.completions.with_raw_response.create(**chat(400))
    assert r.headers["x-dualpool-pool"] == "short"
    assert r.parse().usage is not None and r.parse().choices[0].message.content
    r = c.chat.completions.with_raw_response.create(**chat(20_000))
    assert r.headers["x-dualpool-pool"] == "long"
    assert short.stats()["requests"] == 1 and long.stats()["requests"] == 1
    # Feed usage back: the learned ratio approaches the backend's 3.0 bytes/token.
    for i in range(60):
        c.chat.completions.create(**chat(200 + 97 * i, max_tokens=8))
    status, _, body = raw(gw, "GET", "/admin/calibrator")
    assert status == 200
    cats = {x["category"]: x for x in json.loads(body)["categories"]}
    learned = cats["fake-model/prose"]
    assert learned["learned"] and learned["samples"] >= 50
    assert abs(learned["bytes_per_token"] - 3.0) / 3.0 < 0.05
    metrics = raw(gw, "GET", "/metrics")[2].decode()
    assert 'dualpool_learned_bytes_per_token{category="fake-model/prose"}' in metrics
    assert 'dualpool_calibrator_feedback_total{reason="accepted"}' in metrics
    assert "dualpool_estimate_relative_error_count 62" in metrics
    assert 'dualpool_requests_total{pool="short",outcome="ok"}' in metrics


@pytest.mark.parametrize("client_usage", [False, True])
def test_stream_is_what_the_backend_sent(
    fleet: tuple[FakeBackend, FakeBackend, GatewayThread], client_usage: bool
) -> None:
    short, _, gw = fleet
    body = chat(300, max_tokens=6, stream=True)
    if client_usage:
        body["stream_options"] = {"include_usage": True}
    expected = direct(short, body)
    status, headers, got = post(gw, body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert got == expected
    assert (b'"choices": []' in got) is client_usage
    # the gateway learned from the stream's usage either way
    snap = json.loads(raw(gw, "GET", "/admin/calibrator")[2])
    assert snap["feedback"]["accepted"] + snap["feedback"]["overhead_only"] == 1
    # and the openai client reads it
    chunks = list(client(gw).chat.completions.create(**body))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert (chunks[-1].usage is not None) is client_usage


def test_completions_endpoint_and_models(
    fleet: tuple[FakeBackend, FakeBackend, GatewayThread],
) -> None:
    _, _, gw = fleet
    c = client(gw)
    r = c.completions.create(model="fake-model", prompt="hello there " * 20, max_tokens=4)
    assert r.usage is not None and r.usage.prompt_tokens > 0
    text = "".join(
        x.choices[0].text
        for x in c.completions.create(model="fake-model", prompt="hi", max_tokens=3, stream=True)
    )
    assert text.startswith("tok0")
    models = c.models.list()
    assert models.data[0].id == "fake-model"
    assert raw(gw, "GET", "/v1/models")[2].count(b'"max_model_len": 32768') == 1


def test_rejected_without_calling_a_backend(
    fleet: tuple[FakeBackend, FakeBackend, GatewayThread],
) -> None:
    short, long, gw = fleet
    with pytest.raises(openai.BadRequestError) as err:
        # certain: even at 128 bytes per token (1,563) + the declared 32,000 > 32,768
        client(gw).chat.completions.create(**chat(200_000, max_tokens=32_000))
    assert "maximum context length is 32768 tokens" in str(err.value)
    assert short.stats()["requests"] == 0 and long.stats()["requests"] == 0


def test_misroute_retried_once_on_the_larger_pool(
    backend_factory: Factory, gateway_factory: GwFactory
) -> None:
    # The short backend's tokenizer makes 4x more tokens than the 4.0 prior expects.
    short = backend_factory(4096, bytes_per_token=1.0)
    long = backend_factory(32768, bytes_per_token=1.0)
    gw = gateway_factory(fleet_config(short, long))
    r = client(gw).chat.completions.with_raw_response.create(**chat(6000, max_tokens=64))
    assert r.headers["x-dualpool-pool"] == "long"
    assert short.stats() == {"requests": 1, "completions": 0}
    metrics = raw(gw, "GET", "/metrics")[2].decode()
    assert 'dualpool_misroutes_total{pool="short"} 1' in metrics


def test_health_ready_metrics_and_discovered_max_model_len(
    backend_factory: Factory, gateway_factory: GwFactory
) -> None:
    short = backend_factory(4096)
    long = backend_factory(16384)
    cfg = fleet_config(short, long)
    cfg["pools"][0].pop("threshold")
    gw = gateway_factory(cfg)  # no max_model_len given: read from /v1/models
    assert [p.max_model_len for p in gw.gateway.pools] == [4096, 16384]
    assert raw(gw, "GET", "/health")[0] == 200
    status, _, body = raw(gw, "GET", "/ready")
    assert status == 200 and json.loads(body)["ready"]
    assert raw(gw, "GET", "/nope")[0] == 404
    assert raw(gw, "GET", "/v1/chat/completions")[0] == 405
    long.control(waiting=3, kv=0.4)
    assert wait_for(
        lambda: (
            b'dualpool_backend_waiting{pool="long"' in raw(gw, "GET", "/metrics")[2]
            and b"} 3" in raw(gw, "GET", "/metrics")[2]
        )
    )


# ---- security and malformed input -------------------------------------------------------


def test_api_keys_admin_key_and_bad_bodies(
    backend_factory: Factory, gateway_factory: GwFactory
) -> None:
    short = backend_factory(4096)
    long = backend_factory(32768)
    cfg = fleet_config(
        short,
        long,
        auth={"api_keys": ["k1"], "admin_key": "adm"},
        limits={"max_body_bytes": 100_000},
    )
    gw = gateway_factory(cfg)
    with pytest.raises(openai.AuthenticationError):
        client(gw, "wrong").chat.completions.create(**chat(100))
    assert client(gw, "k1").chat.completions.create(**chat(100)).usage is not None
    status, _, body = post(gw, chat(100))
    assert status == 401 and json.loads(body)["error"]["type"] == "AuthenticationError"
    auth = {"authorization": "Bearer k1"}
    # admin view: the admin key, not a client key
    assert raw(gw, "GET", "/admin/backends", headers=auth)[0] == 401
    status, _, body = raw(gw, "GET", "/admin/backends", headers={"authorization": "Bearer adm"})
    assert status == 200 and "short" in json.loads(body)["pools"]
    # malformed JSON: OpenAI-style 400
    status, _, body = post(gw, b'{"messages": [', auth)
    err = json.loads(body)["error"]
    assert status == 400 and err["type"] == "BadRequestError" and err["code"] == 400
    status, _, body = post(gw, {"model": "m", "messages": "not a list"}, auth)
    assert status == 400 and json.loads(body)["error"]["param"] == "messages"
    status, _, body = post(gw, [1, 2], auth)
    assert status == 400
    # too large: 413 (Content-Length known up front)
    status, _, body = post(gw, chat(200_000), auth)
    assert status == 413 and json.loads(body)["error"]["code"] == 413
    assert short.stats()["requests"] == 1


def http_raw(port: int, data: bytes, read_until: bytes = b"", timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
            if read_until and out.count(read_until) >= 1 and out.endswith(b"}"):
                break
        return out


def test_pipelining_chunked_bodies_expect_continue_and_oversized_chunked(
    fleet: tuple[FakeBackend, FakeBackend, GatewayThread],
) -> None:
    _, _, gw = fleet
    body = json.dumps(chat(100, max_tokens=2)).encode()
    one = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%b" % (len(body), body)
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(one + one + b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert out.count(b"HTTP/1.1 200 OK") == 3 and out.count(b'"usage"') == 2
    assert out.rindex(b'"usage"') < out.rindex(b"HTTP/1.1 200 OK")  # answers in order
    # chunked request body, and Expect: 100-continue
    half = len(body) // 2
    chunked = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
        b"expect: 100-continue\r\nconnection: close\r\n\r\n"
        b"%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:])
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(chunked)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")
    # a chunked body over the limit: 413, then the connection closes
    gw2_limit = gw.config.limits.max_body_bytes
    big = b"x" * 65536
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        sent = 0
        try:
            while sent <= gw2_limit + len(big):
                s.sendall(b"%x\r\n%b\r\n" % (len(big), big))
                sent += len(big)
        except OSError:
            pass
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except OSError:
            pass
    assert out.startswith(b"HTTP/1.1 413")


# ---- failures -----------------------------------------------------------------------------


def test_backend_killed_mid_run_every_request_answered_once(
    backend_factory: Factory, gateway_factory: GwFactory
) -> None:
    a = backend_factory(4096, token_delay=0.002, output_tokens=10)
    b = backend_factory(4096, token_delay=0.002, output_tokens=10)
    long = backend_factory(32768)
    gw = gateway_factory(fleet_config([a, b], long))
    c = client(gw, timeout=15)

    def one(i: int) -> str:
        try:
            if i % 2:
                chunks = list(c.chat.completions.create(**chat(200, max_tokens=10, stream=True)))
                return "ok" if chunks else "empty"
            c.chat.completions.create(**chat(200, max_tokens=10))
            return "ok"
        except openai.APITimeoutError:
            return "hang"
        except openai.APIError as exc:  # a clear error: 5xx or an error event mid-stream
            return f"error:{type(exc).__name__}"

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one, i) for i in range(200)]
        time.sleep(0.3)
        a.kill()
        results = [f.result(timeout=30) for f in futures]
    assert len(results) == 200
    assert "hang" not in results and "empty" not in results
    assert results.count("ok") >= 150, results
    backend_a = next(x for x in gw.gateway.pools[0].backends if x.port == a.port)
    assert wait_for(lambda: not backend_a.healthy, 5)
    # the survivors keep serving; the dead one gets no traffic
    for _ in range(10):
        c.chat.completions.create(**chat(200, max_tokens=2))
    a.start()  # same port
    assert wait_for(lambda: backend_a.healthy, 10), "not probed back in"
    served_before = a.stats()["requests"]
    for _ in range(20):
        c.chat.completions.create(**chat(200, max_tokens=2))
    assert a.stats()["requests"] > served_before


def test_stream_failing_after_first_byte_ends_with_error_event(
    backend_factory: Factory, gateway_factory: GwFactory
) -> None:
    short = backend_factory(4096, output_tokens=6)
    long = backend_factory(32768)
    gw = gateway_factory(fleet_config(short, long))
    short.control(die_after_chunks=3)
    status, _, body = post(gw, chat(200, max_tokens=6, stream=True))
    assert status == 200
    events = [e for e in body.split(b"\n\n") if e]
    assert len(events) == 5  # three chunks, the error, [DONE]
    assert json.loads(events[3][6:])["error"]["code"] == 502
    assert events[4] == b"data: [DONE]"
    with pytest.raises(openai.APIError):
        list(client(gw).chat.completions.create(**chat(200, max_tokens=6, stream=True)))


def test_5xx_before_first_byte_retried_on_another_backend(
    backend_factory: Factory, gateway_factory: GwFactory
) -> None:
    a = backend_factory(4096)
    b = backend_factory(4096)
    long = backend_factory(32768)
    gw = gateway_factory(fleet_config([a, b], long))
    a.control(fail_status=500, fail_count=1000)
    b.control(fail_status=503, fail_count=1)
    c = client(gw)
    for _ in range(6):
        assert c.chat.completions.create(**chat(200, max_tokens=2)).usage is not None
    metrics = raw(gw, "GET", "/metrics")[2].decode()
    assert "dualpool_retries_total" in metrics
    # Out after unhealthy_after consecutive 5xx (its /health still answers 200, so the
    # prober may already have put it back: count the change, not the current state).
    m = gw.gateway.metrics.health_changes
    assert gw.run(lambda: m.value("short", f"127.0.0.1:{a.port}", "out")) >= 1


def test_no_healthy_backend_503(backend_factory: Factory, gateway_factory: GwFactory) -> None:
    short = backend_factory(4096)
    long = backend_factory(32768)
    gw = gateway_factory(fleet_config(short, long))
    short.kill()
    long.kill()
    status, headers, body = post(gw, chat(100))
    assert status in (502, 503) and json.loads(body)["error"]["code"] == status
    assert wait_for(lambda: raw(gw, "GET", "/ready")[0] == 503, 5)
    status, headers, body = post(gw, chat(100))
    assert status == 503 and "retry-after" in headers


def test_overload_answers_429_quickly_and_recovers(
    backend_factory: Factory, gateway_factory: GwFactory
) -> None:
    short = backend_factory(4096)
    long = backend_factory(32768)
    short.control(delay=0.4)
    long.control(delay=0.4)
    cfg = fleet_config(short, long, backpressure={"max_wait": 0.1, "retry_after": 2})
    for p in cfg["pools"]:
        p.update(max_concurrency=2, max_queue=2)
    gw = gateway_factory(cfg)

    def one(_: int) -> tuple[int, str | None, float]:
        t = time.time()
        status, headers, _ = post(gw, chat(100))
        return status, headers.get("retry-after"), time.time() - t

    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        results = list(pool.map(one, range(40)))
    statuses = [s for s, _, _ in results]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 2 and statuses.count(429) >= 10
    assert all(ra == "2" for s, ra, _ in results if s == 429)
    assert max(t for s, _, t in results if s == 429) < 1.0  # quick, not after a backend call
    # nothing left queued or in flight; the gateway still serves
    gw_state = gw.run(
        lambda: [(p.inflight, p.num_waiting, len(gw.gateway.live)) for p in gw.gateway.pools]
    )
    assert gw_state == [(0, 0, 0), (0, 0, 0)]
    short.control(delay=0.0)
    assert post(gw, chat(100))[0] == 200


def test_spillover_when_the_short_pool_is_saturated(
    backend_factory: Factory, gateway_factory: GwFactory
) -> None:
    short = backend_factory(4096)
    long = backend_factory(32768)
    gw = gateway_factory(fleet_config(short, long))
    short.control(waiting=100)  # scraped: the short pool's queue is past max_waiting
    assert wait_for(lambda: gw.gateway.pools[0].saturated, 5)
    r = client(gw).chat.completions.with_raw_response.create(**chat(200))
    assert r.headers["x-dualpool-pool"] == "long"
    assert (
        b'dualpool_spillovers_total{from_pool="short",to_pool="long"} 1'
        in raw(gw, "GET", "/metrics")[2]
    )


def test_dns_endpoints_resolved_and_updated(
    backend_factory: Factory, gateway_factory: GwFactory
) -> None:
    from dualpool.gateway._background import apply_addresses

    short = backend_factory(4096)
    long = backend_factory(32768)
    cfg = fleet_config(short, long)
    cfg["pools"][0] = {
        "name": "short",
        "dns": {"name": "127.0.0.1", "port": short.port, "interval": 0.2},
    }
    gw = gateway_factory(cfg)
    pool = gw.gateway.pools[0]
    assert [b.name for b in pool.backends] == [f"127.0.0.1:{short.port}"]
    assert (
        client(gw).chat.completions.with_raw_response.create(**chat(100)).headers["x-dualpool-pool"]
        == "short"
    )
    gw.run(lambda: apply_addresses(gw.gateway, pool, [], short.port))  # the pod left
    assert pool.backends == [] and pool.saturated
    # the resolver loop brings it back
    assert wait_for(lambda: len(pool.backends) == 1, 5)
