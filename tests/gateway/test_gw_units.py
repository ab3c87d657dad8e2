"""Unit tests of the gateway's pure parts: config, SSE relay, headers, metrics, pools."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from dualpool.cli.main import main
from dualpool.errors import ConfigError
from dualpool.gateway import SseRelay, parse_config, usage_from_body
from dualpool.gateway._backends import Backend, Pool
from dualpool.gateway._background import parse_vllm_metrics
from dualpool.gateway._config import PoolConfig
from dualpool.gateway._errors import error_body, error_event
from dualpool.gateway._headers import filter_request_headers, filter_response_headers
from dualpool.gateway._metrics import Counter, Histogram, Registry

BASE: dict[str, Any] = {
    "pools": [
        {"name": "short", "endpoints": ["http://127.0.0.1:9001"], "max_model_len": 8192},
        {"name": "long", "endpoints": ["http://127.0.0.1:9002"], "max_model_len": 65536},
    ]
}


def with_(path: str, value: Any) -> dict[str, Any]:
    cfg = json.loads(json.dumps(BASE))
    node = cfg
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return cfg


# ---- config -------------------------------------------------------------------------


def test_config_defaults() -> None:
    cfg = parse_config(BASE)
    assert [p.name for p in cfg.pools] == ["short", "long"]
    assert cfg.pools[0].endpoints == (("127.0.0.1", 9001),)
    assert cfg.timeouts.connect > 0 and cfg.limits.max_body_bytes > 0
    assert not cfg.auth.api_keys


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("pools", [], "pools"),
        ("pools.0.endpoints", ["ftp://x:1"], "pools.short.endpoints[0]"),
        ("pools.0.endpoints", ["http://x:1/v2/chat"], "pools.short.endpoints[0]"),
        ("pools.0.endpoints", [], "pools.short.endpoints"),
        ("pools.0.max_model_len", -5, "pools.short.max_model_len"),
        ("pools.0.threshold", 9000, "pools.short.threshold"),
        ("pools.0.max_kv_usage", 1.5, "pools.short.max_kv_usage"),
        ("pools.0.colour", "red", "pools[0].colour"),
        ("pools.1.name", "short", "pools"),
        ("timeouts.connect", "fast", "timeouts.connect"),
        ("timeouts.first_byte", 0, "timeouts.first_byte"),
        ("limits.max_body_bytes", 0, "limits.max_body_bytes"),
        ("log.level", "loud", "log.level"),
        ("estimator.gamma", -1, "estimator.gamma"),
        ("estimator.nonsense", 1, "estimator.nonsense"),
        ("auth.api_keys", "one-key", "auth.api_keys"),
        ("auth.admin_key", {"env": "DUALPOOL_TEST_UNSET_VAR"}, "auth.admin_key"),
        ("listen.port", 70000, "listen.port"),
        ("spillover", "yes", "spillover"),
        ("retries.same_pool", -1, "retries.same_pool"),
        ("frobnicate", 1, "frobnicate"),
    ],
)
def test_config_errors_name_the_field(path: str, value: Any, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(with_(path, value))
    assert err.value.field == field, str(err.value)
    assert "\n" not in str(err.value)


def test_config_dns_and_secrets_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DP_KEY", "sekret")
    cfg = parse_config(
        with_("pools.1", {"name": "long", "dns": {"name": "vllm-long.ns.svc", "port": 8000}})
        | {"auth": {"api_keys": [{"env": "DP_KEY"}, "k2"], "admin_key": "adm"}}
    )
    assert cfg.pools[1].dns is not None and cfg.pools[1].dns.port == 8000
    assert cfg.auth.api_keys == frozenset({"sekret", "k2"})


def test_serve_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "fleet.yaml"
    good.write_text(json.dumps(BASE))
    assert main(["serve", "--check", "--config", str(good)]) == 0
    assert "config ok" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools:\n  - name: short\n    endpoints: [http://a:1]\n    threshold: nope\n")
    assert main(["serve", "--check", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pools.short.threshold" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("pools: [\n")
    assert main(["serve", "--check", "--config", str(broken)]) == 2
    assert "--config" in capsys.readouterr().err
    assert main(["serve", "--check", "--config", str(tmp_path / "missing.yaml")]) == 2


# ---- SSE relay ------------------------------------------------------------------------


def sse(*objs: Any) -> bytes:
    out = b""
    for o in objs:
        out += b"data: " + (o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n\n"
    return out


CHUNK = {
    "id": "c",
    "object": "chat.completion.chunk",
    "choices": [{"index": 0, "delta": {"content": "hi"}}],
}
USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
USAGE_CHUNK = {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": USAGE}


def relay_all(relay: SseRelay, data: bytes, step: int) -> bytes:
    out = b""
    for i in range(0, len(data), step):
        out += relay.feed(data[i : i + step])
    return out + relay.flush()


@pytest.mark.parametrize("step", [1, 3, 7, 64, 10_000])
def test_relay_strips_the_injected_usage_chunk(step: int) -> None:
    upstream = sse(CHUNK, CHUNK, USAGE_CHUNK, b"[DONE]")
    relay = SseRelay(strip_usage=True)
    assert relay_all(relay, upstream, step) == sse(CHUNK, CHUNK, b"[DONE]")
    assert relay.usage == USAGE


@pytest.mark.parametrize("step", [1, 5, 10_000])
def test_relay_keeps_a_usage_chunk_the_client_asked_for(step: int) -> None:
    upstream = sse(CHUNK, USAGE_CHUNK, b"[DONE]")
    relay = SseRelay(strip_usage=False)
    assert relay_all(relay, upstream, step) == upstream
    assert relay.usage == USAGE


def test_relay_keeps_content_that_mentions_usage() -> None:
    talk = {"id": "c", "choices": [{"index": 0, "delta": {"content": 'the "usage" key'}}]}
    cont = dict(CHUNK, usage=USAGE)  # continuous usage stats ride on content chunks
    upstream = sse(talk, cont, b"[DONE]")
    relay = SseRelay(strip_usage=True)
    assert relay_all(relay, upstream, 4) == upstream
    assert relay.usage == USAGE


def test_relay_crlf_events_and_bounded_buffer() -> None:
    upstream = b"data: " + json.dumps(USAGE_CHUNK).encode() + b"\r\n\r\ndata: [DONE]\r\n\r\n"
    relay = SseRelay(strip_usage=True)
    assert relay_all(relay, upstream, 1000) == b"data: [DONE]\r\n\r\n"
    big = SseRelay(strip_usage=True)
    blob = b"x" * (2 << 20)
    assert big.feed(blob) == blob  # no event end in sight: forwarded, not held


def test_usage_from_body() -> None:
    body = json.dumps(
        {"id": "x", "choices": [{"message": {"content": '"usage": 1'}}], "usage": USAGE}
    )
    assert usage_from_body(body.encode()) == USAGE
    assert usage_from_body(b'{"usage": null}') is None
    assert usage_from_body(b"{}") is None
    assert usage_from_body(b'{"usage": {"prompt_tokens": 5}, "x": 1}') == {"prompt_tokens": 5}


# ---- headers, errors, metrics ---------------------------------------------------------


def test_request_headers_drop_hop_by_hop_and_secrets() -> None:
    headers = [
        (b"host", b"gw"),
        (b"connection", b"keep-alive, x-private"),
        (b"keep-alive", b"timeout=5"),
        (b"x-private", b"1"),
        (b"authorization", b"Bearer client-key"),
        (b"transfer-encoding", b"chunked"),
        (b"content-length", b"10"),
        (b"te", b"trailers"),
        (b"upgrade", b"h2c"),
        (b"proxy-authorization", b"x"),
        (b"x-request-id", b"abc"),
        (b"traceparent", b"00-1-2-01"),
    ]
    out = filter_request_headers(headers)
    assert out == b"x-request-id: abc\r\ntraceparent: 00-1-2-01\r\n"


def test_response_headers_drop_hop_by_hop() -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"5"),
        (b"connection", b"close"),
        (b"transfer-encoding", b"chunked"),
        (b"x-vllm", b"1"),
    ]
    assert filter_response_headers(headers) == [
        (b"content-type", b"application/json"),
        (b"x-vllm", b"1"),
    ]


def test_error_shapes() -> None:
    obj = json.loads(error_body(400, "bad", "messages"))
    assert obj == {
        "error": {"message": "bad", "type": "BadRequestError", "param": "messages", "code": 400}
    }
    ev = error_event(502, "gone")
    assert ev.endswith(b"data: [DONE]\n\n")
    assert json.loads(ev.split(b"\n\n")[0][6:])["error"]["code"] == 502


def test_metrics_exposition() -> None:
    r = Registry()
    c = r.add(Counter("dualpool_x", "help x", ("pool",)))
    h = r.add(Histogram("dualpool_h", "help h", buckets=(0.1, 1.0)))
    c.labels('we"ird').inc(2)
    h.observe(0.05)
    h.observe(5)
    text = r.render().decode()
    assert 'dualpool_x_total{pool="we\\"ird"} 2' in text
    assert 'dualpool_h_bucket{le="0.1"} 1' in text
    assert 'dualpool_h_bucket{le="+Inf"} 2' in text
    assert "dualpool_h_count 2" in text
    assert "# TYPE dualpool_h histogram" in text


def test_parse_vllm_metrics() -> None:
    text = (
        "# HELP vllm:num_requests_waiting x\n"
        'vllm:num_requests_waiting{engine="0",model_name="m"} 3.0\n'
        'vllm:num_requests_waiting{engine="1",model_name="m"} 2.0\n'
        'vllm:num_requests_waiting_by_reason{reason="x"} 99\n'
        'vllm:kv_cache_usage_perc{engine="0"} 0.5\n'
        'vllm:kv_cache_usage_perc{engine="1"} 0.75\n'
    )
    assert parse_vllm_metrics(text) == (5.0, 0.75)


# ---- pools: choice and slots ------------------------------------------------------------


def make_pool(n: int, **kw: Any) -> Pool:
    cfg = PoolConfig(name="p", endpoints=tuple(("h", 1000 + i) for i in range(n)), **kw)
    pool = Pool(cfg, 0, 8192)
    for i in range(n):
        pool.add(Backend("p", "h", 1000 + i, 4))
    return pool


def test_pick_least_outstanding_and_health() -> None:
    pool = make_pool(3)
    a, b, c = pool.backends
    a.inflight, b.inflight, c.inflight = 3, 1, 2
    assert pool.pick() is b
    b.waiting = 5  # scraped queue counts too
    assert pool.pick() is c
    assert pool.pick((c,)) is a
    c.healthy = False
    pool.refresh()
    assert pool.pick() is a
    for x in pool.backends:
        x.healthy = False
    pool.refresh()
    assert pool.saturated
    # Nothing in: one half-open trial per out backend, then nothing to pick.
    trials = [pool.pick() for _ in range(3)]
    assert set(trials) == {a, b, c} and all(x.trial for x in pool.backends)
    assert pool.pick() is None


def test_pick_many_backends_is_bounded() -> None:
    pool = make_pool(64)
    for i, b in enumerate(pool.backends):
        b.inflight = 100 if i else 0
    # power of two choices never picks the busier of its two candidates
    picks = {pool.pick() for _ in range(500)}
    assert pool.backends[0] in picks


def test_pool_slots_queue_and_expiry() -> None:
    async def run() -> None:
        pool = make_pool(1, max_concurrency=1, max_queue=1)
        assert pool.try_acquire()
        assert not pool.saturated or pool.inflight == 1
        waiter = asyncio.ensure_future(pool.acquire(5.0))
        await asyncio.sleep(0)
        assert pool.num_waiting == 1
        assert not await pool.acquire(5.0)  # the queue is full: refused at once
        pool.release()  # the slot passes to the waiter
        assert await waiter and pool.inflight == 1 and pool.num_waiting == 0
        assert not await pool.acquire(0.05)  # expires
        assert pool.num_waiting == 0
        pool.release()
        assert pool.inflight == 0

    asyncio.run(run())


def test_settle_heap_freezes_what_start_up_left_alive() -> None:
    import gc

    from dualpool.gateway._server import settle_heap

    before = gc.get_freeze_count()
    try:
        settle_heap()
        assert gc.get_freeze_count() > before
        # what is frozen is no longer walked by a full collection
        assert len(gc.get_objects(generation=2)) < gc.get_freeze_count()
    finally:
        gc.unfreeze()
