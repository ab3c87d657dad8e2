"""Several models behind one gateway, each with its own pools, routed by the request's
`model` (or an alias); an unknown model gets vLLM's 404. And SIGHUP reloads that add
and remove pools and models, and change global settings, without cutting a stream."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from gw_helpers import FakeBackend, GatewayThread, fleet_config
from test_ops import chat_body, get, serve_proc, wait_for

Factory = Callable[..., FakeBackend]
GwFactory = Callable[[dict[str, Any]], GatewayThread]
Serve = Callable[[dict[str, Any]], tuple[Any, int, Path]]

__all__ = ["serve_proc"]  # the fixture, used here


def _two_models(short: FakeBackend, long: FakeBackend, other: FakeBackend) -> dict[str, Any]:
    cfg = fleet_config(short, long)
    del cfg["pools"]
    cfg["models"] = {
        "a": {
            "aliases": ["a-alias"],
            "pools": [
                {"name": "short", "endpoints": [short.url], "max_model_len": 4096},
                {"name": "long", "endpoints": [long.url], "max_model_len": 32768},
            ],
        },
        "b": {"pools": [{"name": "b-pool", "endpoints": [other.url], "max_model_len": 8192}]},
    }
    return cfg


def _pool_of(c: openai.OpenAI, **body: Any) -> str:
    r = c.chat.completions.with_raw_response.create(**chat_body(**body))
    assert r.parse().usage is not None
    return str(r.headers["x-dualpool-pool"])


def test_several_models_route_by_model_with_their_own_pools(
    backend_factory: Factory, gateway_factory: GwFactory
) -> None:
    short, long, other = backend_factory(4096), backend_factory(32768), backend_factory(8192)
    gw = gateway_factory(_two_models(short, long, other))
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
    cards = {m.id: m.model_extra for m in c.models.list().data}
    assert list(cards) == ["a", "b"]
    assert cards["a"] is not None and cards["a"]["max_model_len"] == 32768
    assert cards["b"] is not None and cards["b"]["max_model_len"] == 8192
    # Each model's own pools; an alias is its model; a long prompt spills to a's long pool.
    assert _pool_of(c, model="a") == "short"
    assert _pool_of(c, model="a-alias") == "short"
    assert _pool_of(c, model="a", nbytes=60_000) == "long"
    assert _pool_of(c, model="b") == "b-pool"
    # Without `model`: the first model.
    body = chat_body()
    del body["model"]
    status, raw = _post(gw.url, body)
    assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] > 0
    # Unknown model: vLLM's 404, no backend called.
    before = [b.stats()["requests"] for b in (short, long, other)]
    with pytest.raises(openai.NotFoundError) as err:
        c.chat.completions.create(**chat_body(model="nope"))
    assert err.value.body == {
        "message": "The model `nope` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }
    with pytest.raises(openai.BadRequestError, match="'model' must be a string"):
        c.chat.completions.create(**chat_body(model=7))
    assert [b.stats()["requests"] for b in (short, long, other)] == before
    # /ready, /admin and /metrics cover every model; pool names label the metrics.
    ready = json.loads(get(f"{gw.url}/ready")[1])
    assert ready["healthy_backends"] == {"short": 1, "long": 1, "b-pool": 1}
    admin = json.loads(get(f"{gw.url}/admin")[1])
    assert admin["models"] == {
        "a": {"aliases": ["a-alias"], "pools": ["short", "long"]},
        "b": {"aliases": [], "pools": ["b-pool"]},
    }
    assert admin["pools"]["b-pool"]["model"] == "b"
    assert admin["pools"]["b-pool"]["threshold"] == 8192
    metrics = get(f"{gw.url}/metrics")[1].decode()
    assert 'dualpool_requests_total{pool="b-pool",outcome="ok"} 1' in metrics
    assert 'dualpool_rejections_total{reason="unknown_model"} 1' in metrics
    # One model going down leaves the other served, /ready says degraded.
    other.kill()
    wait_for(lambda: json.loads(get(f"{gw.url}/ready")[1])["degraded"])
    assert _pool_of(c, model="a") == "short"


def _post(url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    import urllib.request

    req = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.read()


def test_pools_config_serves_any_model_name_as_before(
    backend_factory: Factory, gateway_factory: GwFactory
) -> None:
    short, long = backend_factory(4096), backend_factory(32768)
    gw = gateway_factory(fleet_config(short, long))
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
    assert _pool_of(c, model="whatever") == "short"


def test_check_lists_models_for_both_faces(
    backend_factory: Factory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dualpool.cli.main import main

    short, long, other = backend_factory(4096), backend_factory(32768), backend_factory(8192)
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(_two_models(short, long, other)))
    assert main(["serve", "--check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "models a (alias a-alias): short, long, b: b-pool" in out
    # dualpool extproc routes several models too (tests/extproc/test_extproc_units.py).
    assert main(["extproc", "--check", "--config", str(path)]) == 0
    assert "models a (alias a-alias): short, long, b: b-pool" in capsys.readouterr().out


def test_sighup_adds_and_removes_pools_and_models_without_cutting_a_stream(
    backend_factory: Factory, serve_proc: Serve, tmp_path: Path
) -> None:
    slow = backend_factory(4096, token_delay=0.1, output_tokens=30)
    long, other = backend_factory(32768), backend_factory(8192)
    cfg = fleet_config(slow, long)
    cfg["pools"][1]["max_model_len"] = 32768
    cfg["pools"][0]["max_model_len"] = 4096
    cfg["model"] = "a"
    proc, port, path = serve_proc(cfg)
    url = f"http://127.0.0.1:{port}"
    c = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)
    result: dict[str, Any] = {}

    def stream() -> None:
        body = {**chat_body(model="a"), "max_tokens": 30}  # 30 tokens, 0.1 s apart
        chunks = list(c.chat.completions.create(**body, stream=True))
        result["text"] = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        result["finish"] = chunks[-1].choices[0].finish_reason

    t = threading.Thread(target=stream)
    t.start()
    wait_for(lambda: slow.stats()["requests"] == 1, 10)  # the stream has started
    # The new config: the stream's pool is gone; model a has only `long`, model b
    # (new) has a new pool found by /v1/models; an API key now; more retries.
    new = {
        "models": {
            "a": {"pools": [{"name": "long", "endpoints": [long.url], "max_model_len": 32768}]},
            "b": {"aliases": ["bee"], "pools": [{"name": "b-pool", "endpoints": [other.url]}]},
        },
        "listen": {"host": "127.0.0.1", "port": port},
        "auth": {"api_keys": ["k1"]},
        "retries": {"same_pool": 3},
        "health": cfg["health"],
        "timeouts": cfg["timeouts"],
        "log": cfg["log"],
    }
    path.write_text(yaml.safe_dump(new))
    proc.send_signal(signal.SIGHUP)
    log_path = tmp_path / "serve.log"
    wait_for(lambda: "reload of" in log_path.read_text())
    assert t.is_alive()  # the reload happened while the stream ran (3 s)
    t.join(20)
    assert result.get("finish") == "length" and len(result["text"]) > 0  # not cut
    # After the reload: the new key, the new routes.
    with pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(**chat_body(model="a"))
    k = openai.OpenAI(base_url=f"{url}/v1", api_key="k1", max_retries=0, timeout=30)
    before = slow.stats()["requests"]
    assert _pool_of(k, model="a") == "long"
    assert _pool_of(k, model="bee") == "b-pool"
    assert slow.stats()["requests"] == before
    assert [m.id for m in k.models.list().data] == ["a", "b"]
    ready = json.loads(get(f"{url}/ready")[1])
    assert ready["healthy_backends"] == {"long": 1, "b-pool": 1}
    line = next(ln for ln in log_path.read_text().splitlines() if "reload of" in ln)
    for part in ("pools.short (removed)", "pools.b-pool (added)", "models", "auth", "retries"):
        assert part in line
    # A reload naming a pool whose backend cannot tell its max_model_len keeps the config.
    bad = json.loads(json.dumps(new))
    bad["models"]["b"]["pools"][0]["endpoints"] = ["http://127.0.0.1:9"]
    bad["timeouts"]["discovery"] = 0.5
    bad["models"]["b"]["pools"][0]["name"] = "c-pool"
    path.write_text(yaml.safe_dump(bad))
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "keeping the running config" in log_path.read_text())
    time.sleep(0.1)
    assert _pool_of(k, model="b") == "b-pool"
    assert proc.poll() is None


def test_reload_keeps_unchanged_routers_and_applies_limits_to_new_connections(
    backend_factory: Factory, gateway_factory: GwFactory, tmp_path: Path
) -> None:
    from dualpool.gateway._ops import reload

    short, long, other = backend_factory(4096), backend_factory(32768), backend_factory(8192)
    cfg = _two_models(short, long, other)
    gw = gateway_factory(cfg)
    g = gw.gateway
    routers = {s.name: s.router for s in g.models.served}
    new = json.loads(json.dumps(cfg))
    new["models"]["b"]["pools"][0]["threshold"] = 4000  # b's policy changes, a's does not
    new["limits"] = {"max_body_bytes": 20_000}
    new["backpressure"] = {"retry_after": 7}
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(new))
    changes = gw.call(reload(g, path, host=None, port=None))
    assert "pools.b-pool.threshold" in changes and "limits" in changes
    after = {s.name: s.router for s in g.models.served}
    assert after["a"] is routers["a"] and after["b"] is not routers["b"]
    assert after["b"].estimator is routers["a"].estimator  # one shared estimator
    assert g.retry_after == ((b"retry-after", b"7"),)
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        c.chat.completions.create(**chat_body(nbytes=40_000))
    assert err.value.status_code == 413
    assert _pool_of(c, model="b") == "b-pool"
    # The same file again: nothing changes, every router is kept.
    assert gw.call(reload(g, path, host=None, port=None)) == []
    assert {s.name: s.router for s in g.models.served} == after
