"""Operating the gateway: /ready while any pool serves (degraded apart), an API key
on /metrics, TLS on the listening socket, SIGHUP reloads without dropping requests."""

from __future__ import annotations

import json
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from gw_helpers import FakeBackend, GatewayThread, fleet_config
from redis_helpers import free_port

Factory = Callable[..., FakeBackend]
GwFactory = Callable[[dict[str, Any]], GatewayThread]


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def chat_body(nbytes: int = 200, **extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": "word " * (nbytes // 5)}],
        "max_tokens": 8,
        **extra,
    }


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_ready_while_any_pool_serves_and_degraded_reported_apart(
    backend_factory: Factory, gateway_factory: GwFactory
) -> None:
    short, long = backend_factory(4096), backend_factory(32768)
    gw = gateway_factory(fleet_config(short, long))
    status, body = get(f"{gw.url}/ready")
    assert status == 200 and json.loads(body)["degraded"] is False
    short.kill()
    wait_for(lambda: json.loads(get(f"{gw.url}/ready")[1])["degraded"])
    status, body = get(f"{gw.url}/ready")
    state = json.loads(body)
    assert status == 200 and state["ready"] and state["unavailable_pools"] == ["short"]
    metrics = get(f"{gw.url}/metrics")[1].decode()
    assert "dualpool_degraded 1" in metrics and "dualpool_ready 1" in metrics
    assert 'dualpool_pool_available{pool="short"} 0' in metrics
    # Still serving: the short request spills to the long pool.
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
    assert c.chat.completions.create(**chat_body()).usage is not None
    long.kill()
    wait_for(lambda: get(f"{gw.url}/ready")[0] == 503)
    assert json.loads(get(f"{gw.url}/ready")[1])["ready"] is False


def test_metrics_needs_its_key_when_configured(
    backend_factory: Factory, gateway_factory: GwFactory
) -> None:
    short, long = backend_factory(4096), backend_factory(32768)
    gw = gateway_factory(fleet_config(short, long, auth={"metrics_key": "scrape-me"}))
    status, body = get(f"{gw.url}/metrics")
    assert status == 401 and json.loads(body)["error"]["code"] == 401
    assert get(f"{gw.url}/metrics", {"authorization": "Bearer wrong"})[0] == 401
    status, body = get(f"{gw.url}/metrics", {"authorization": "Bearer scrape-me"})
    assert status == 200 and b"# TYPE dualpool_requests_total counter" in body
    # The API still needs no key (auth.api_keys is empty).
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
    assert c.chat.completions.create(**chat_body()).usage is not None


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    exe = shutil.which("openssl")
    if exe is None:
        pytest.skip("openssl not installed (needed to make a test certificate)")
    crt, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [exe, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True,
    )  # fmt: skip
    return crt, key


def test_tls_on_the_listening_socket_with_the_openai_client(
    backend_factory: Factory, gateway_factory: GwFactory, cert: tuple[Path, Path]
) -> None:
    crt, key = cert
    short, long = backend_factory(4096), backend_factory(32768)
    cfg = fleet_config(short, long)
    cfg["listen"] = {"tls": {"cert": str(crt), "key": str(key)}}
    gw = gateway_factory(cfg)
    base = f"https://127.0.0.1:{gw.port}/v1"
    c = openai.OpenAI(
        base_url=base,
        api_key="none",
        max_retries=0,
        http_client=httpx.Client(verify=ssl.create_default_context(cafile=str(crt))),
    )
    out = c.chat.completions.create(**chat_body())
    assert out.usage is not None and out.usage.prompt_tokens > 0
    chunks = list(c.chat.completions.create(**chat_body(), stream=True))
    assert chunks and chunks[-1].choices[0].finish_reason is not None
    with pytest.raises(openai.APIConnectionError):  # the certificate is checked
        openai.OpenAI(base_url=base, api_key="none", max_retries=0).models.list()


def test_tls_files_are_checked_at_load(tmp_path: Path) -> None:
    from dualpool.errors import ConfigError
    from dualpool.gateway import parse_config

    with pytest.raises(ConfigError, match=r"listen\.tls\.cert"):
        parse_config(
            {
                "listen": {"tls": {"cert": str(tmp_path / "no.pem"), "key": "k"}},
                "pools": [{"name": "a", "endpoints": ["http://x:1"]}],
            }
        )


@pytest.fixture
def serve_proc(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], tuple[Any, int, Path]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(cfg: dict[str, Any]) -> tuple[subprocess.Popen[bytes], int, Path]:
        port = free_port()
        path = tmp_path / "fleet.yaml"
        path.write_text(yaml.safe_dump({**cfg, "listen": {"host": "127.0.0.1", "port": port}}))
        log = (tmp_path / "serve.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "dualpool", "serve", "--config", str(path)], stderr=log
        )
        procs.append(proc)
        wait_for(lambda: _up(port), 20)
        return proc, port, path

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(5)


def _up(port: int) -> bool:
    try:
        return get(f"http://127.0.0.1:{port}/health")[0] == 200
    except OSError:
        return False


def test_sighup_reloads_pools_without_dropping_requests(
    backend_factory: Factory,
    serve_proc: Callable[[dict[str, Any]], tuple[Any, int, Path]],
    tmp_path: Path,
) -> None:
    a = backend_factory(4096, token_delay=0.05, output_tokens=30)
    b = backend_factory(4096)
    long = backend_factory(32768)
    cfg = fleet_config(a, long)
    cfg["pools"][0]["max_model_len"] = 4096
    cfg["pools"][1]["max_model_len"] = 32768
    cfg["log"] = {"level": "info", "access": "debug"}
    proc, port, path = serve_proc(cfg)
    url = f"http://127.0.0.1:{port}"
    c = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)
    # A stream in flight across the reload.
    result: dict[str, Any] = {}

    def stream() -> None:
        body = {**chat_body(), "max_tokens": 30}  # 30 tokens, 50 ms apart: 1.5 s
        chunks = list(c.chat.completions.create(**body, stream=True))
        result["text"] = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        result["finish"] = chunks[-1].choices[0].finish_reason

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(0.3)
    new = json.loads(json.dumps(cfg))
    new["listen"] = {"host": "127.0.0.1", "port": port}
    new["pools"][0]["endpoints"] = [b.url]  # a leaves, b joins
    new["pools"][0]["max_concurrency"] = 7
    new["pools"][0]["threshold"] = 1000  # the model's policy is rebuilt with it
    new["calibrator"] = {"save_interval": 5}  # needs a restart: named, not applied
    path.write_text(yaml.safe_dump(new))
    proc.send_signal(signal.SIGHUP)

    def short_backends() -> list[str]:
        pools = json.loads(get(f"{url}/admin/backends")[1])["pools"]
        return [x["backend"] for x in pools["short"]["backends"]]

    wait_for(lambda: short_backends() == [f"127.0.0.1:{b.port}"])
    t.join(20)
    assert result.get("finish") == "length" and result["text"]  # the stream was not cut
    pools = json.loads(get(f"{url}/admin/backends")[1])["pools"]
    assert pools["short"]["max_concurrency"] == 7
    assert pools["short"]["threshold"] == 1000
    before = b.stats()["requests"]
    assert c.chat.completions.create(**chat_body()).usage is not None
    assert b.stats()["requests"] == before + 1
    # A bad file keeps the running config and logs one line.
    path.write_text("pools: [\n")
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "keeping the running config" in (tmp_path / "serve.log").read_text())
    assert proc.poll() is None
    assert c.chat.completions.create(**chat_body()).usage is not None
    log = (tmp_path / "serve.log").read_text().splitlines()
    assert sum("keeping the running config" in ln for ln in log) == 1
    assert any("needs a restart, not applied: calibrator" in ln for ln in log)


def _pools(short: FakeBackend, long: FakeBackend) -> list[dict[str, Any]]:
    return [
        {"name": "short", "endpoints": [short.url], "max_model_len": 4096},
        {"name": "long", "endpoints": [long.url], "max_model_len": 32768},
    ]


def test_one_model_under_models_serves_like_pools(
    backend_factory: Factory, gateway_factory: GwFactory
) -> None:
    short, long = backend_factory(4096), backend_factory(32768)
    cfg = fleet_config(short, long)
    del cfg["pools"]
    cfg["models"] = {"m": {"aliases": ["m-alias"], "pools": _pools(short, long)}}
    gw = gateway_factory(cfg)
    assert gw.config.model == "m" and gw.config.models[0].pools == ("short", "long")
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
    assert [m.id for m in c.models.list().data] == ["m"]
    assert c.chat.completions.create(**chat_body()).usage is not None
