"""The end-to-end demo: emulated vLLM pools, the gateway in front, a replayed workload.

    short pool  ─ `dualpool emulate` (max_model_len 8192, 128 seqs) ─┐
    long pool   ─ `dualpool emulate` (max_model_len 65536, 16 seqs) ─┤◄─ gateway ◄─ clients
                                                                     │   (this process)
Every request goes over real HTTP through the gateway, which estimates its token
budget without a tokenizer, routes it, and learns bytes per token from the
`usage.prompt_tokens` the emulated vLLM instances count with the real Llama-3
tokenizer. What the demo reports comes from the responses and from the gateway's
own admin view and /metrics.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from dualpool.emulator.testing import EmulatorProcess
from dualpool.gateway.testing import GatewayThread
from dualpool.samples import sample_bodies

__all__ = ["DemoResult", "RequestOutcome", "run_demo"]


@dataclass(slots=True)
class RequestOutcome:
    kind: str
    stream: bool
    status: int
    pool: str
    # usage as the backend counted it (0 when the request failed).
    prompt_tokens: int
    completion_tokens: int
    # The request's declared output limit, or None.
    max_tokens: int | None
    ttft_s: float
    e2e_s: float
    error: str = ""


@dataclass(slots=True)
class DemoResult:
    outcomes: list[RequestOutcome]
    b_short: int
    calibrator: dict[str, Any]
    pools: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0


def _http(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 300
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"content-type": "application/json"} if body else {}
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


class _Client:
    """One keep-alive connection per worker thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def conn(self) -> http.client.HTTPConnection:
        c: http.client.HTTPConnection | None = getattr(self.local, "conn", None)
        if c is None:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
            self.local.conn = c
        return c

    def send(self, kind: str, body: dict[str, Any], stream: bool) -> RequestOutcome:
        if stream:
            body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        data = json.dumps(body).encode()
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        t0 = time.perf_counter()
        conn = self.conn()
        try:
            conn.request(
                "POST",
                "/v1/chat/completions",
                body=data,
                headers={"content-type": "application/json"},
            )
            r = conn.getresponse()
            pool = r.getheader("x-dualpool-pool") or "-"
            ttft = 0.0
            usage: dict[str, Any] = {}
            if stream and r.status == 200:
                while True:
                    line = r.readline()
                    if not line:
                        break
                    if not line.startswith(b"data: "):
                        continue
                    if not ttft:
                        ttft = time.perf_counter() - t0
                    payload = line[6:].strip()
                    if payload == b"[DONE]":
                        break
                    chunk = json.loads(payload)
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                r.read()
            else:
                raw = r.read()
                ttft = time.perf_counter() - t0
                if r.status == 200:
                    usage = json.loads(raw).get("usage") or {}
                else:
                    err = json.loads(raw).get("error", {}).get("message", raw[:200].decode())
                    return RequestOutcome(
                        kind,
                        stream,
                        r.status,
                        pool,
                        0,
                        0,
                        limit,
                        ttft,
                        time.perf_counter() - t0,
                        err,
                    )
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.local.conn = None
            return RequestOutcome(
                kind, stream, 0, "-", 0, 0, limit, 0.0, time.perf_counter() - t0, repr(exc)
            )
        return RequestOutcome(
            kind,
            stream,
            r.status,
            pool,
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", 0)),
            limit,
            ttft,
            time.perf_counter() - t0,
        )


def _scrape(port: int) -> dict[str, float]:
    status, _, body = _http(port, "GET", "/metrics")
    out: dict[str, float] = {}
    if status != 200:
        return out
    for line in body.decode().splitlines():
        if line.startswith("dualpool_") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


def run_demo(
    *,
    requests: int = 300,
    seed: int = 0,
    concurrency: int = 32,
    speedup: float = 20.0,
    model: str = "llama-3.1-8b",
    gpu: str = "h100-80gb",
    b_short: int = 8192,
    long_len: int = 65536,
    stream_fraction: float = 0.3,
    progress: Callable[[int, int], None] | None = None,
) -> DemoResult:
    """Start the emulated pools and the gateway, replay `requests` sample bodies, report."""
    common = [
        "--model",
        model,
        "--gpu",
        gpu,
        "--speedup",
        str(speedup),
        "--seed",
        str(seed),
        "--served-model-name",
        model,
    ]
    short_args = [
        *common,
        "--max-model-len",
        str(b_short),
        "--max-num-seqs",
        "128",
        "--max-num-batched-tokens",
        "16384",
    ]
    long_args = [
        *common,
        "--max-model-len",
        str(long_len),
        "--max-num-seqs",
        "16",
        "--max-num-batched-tokens",
        "8192",
    ]
    t_start = time.perf_counter()
    with EmulatorProcess(short_args) as short, EmulatorProcess(long_args) as long:
        config = {
            "model": model,
            "pools": [
                {"name": "short", "endpoints": short.urls, "threshold": b_short},
                {"name": "long", "endpoints": long.urls},
            ],
            "health": {"interval": 1.0, "metrics_interval": 0.5, "timeout": 2.0},
            "log": {"level": "warning", "access": "debug"},
        }
        with GatewayThread(config) as gw:
            client = _Client(gw.port)
            samples = sample_bodies(requests, seed=seed, model=model)
            done = 0
            lock = threading.Lock()

            def one(i: int) -> RequestOutcome:
                nonlocal done
                s = samples[i]
                out = client.send(s.kind, s.body, stream=(i * 7919 % 100) < stream_fraction * 100)
                with lock:
                    done += 1
                    if progress is not None:
                        progress(done, requests)
                return out

            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                outcomes = list(pool.map(one, range(requests)))
            status, _, body = _http(gw.port, "GET", "/admin")
            admin = json.loads(body) if status == 200 else {}
            metrics = _scrape(gw.port)
    return DemoResult(
        outcomes=outcomes,
        b_short=b_short,
        calibrator=admin.get("calibrator", {}),
        pools=admin.get("pools", {}),
        metrics=metrics,
        wall_s=time.perf_counter() - t_start,
    )
