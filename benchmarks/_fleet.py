"""The reliability benchmarks' fleet: emulator processes, fault proxies, a gateway
process, and a raw asyncio HTTP/1.1 load generator that judges every answer.

Loopback only. Each backend is one `dualpool emulate` process on a fixed port (so a
SIGKILL + restart keeps it); the gateway is `dualpool serve` in its own process.
Every request ends in exactly one `Tally` class:

    ok            200, whole answer (a stream ends with data: [DONE] and no error event)
    stream_error  200 stream ended by an SSE error event and the chunked end (clean)
    http_4xx      a 4xx answer (429 counted apart, with its latency)
    http_5xx      a 5xx answer, before the first byte
    lost          no complete answer: reset, EOF mid-answer, or no answer in time
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODEL = "bench"
SHORT_LEN = 8192
LONG_LEN = 32768


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _env(src_dir: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    src = src_dir or str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Backend:
    """One `dualpool emulate` process on a fixed loopback port."""

    def __init__(
        self, max_model_len: int, speedup: float, logdir: Path, name: str, session: bool = False
    ) -> None:
        self.session = session  # a session (CPU autogroup) of its own, as a container's cgroup
        self.max_model_len = max_model_len
        self.speedup = speedup
        self.port = free_port()
        self.log = logdir / f"{name}.log"
        self.proc: subprocess.Popen[str] | None = None
        self.stopped = False

    def start(self, timeout: float = 60.0) -> None:
        cmd = [
            sys.executable, "-m", "dualpool", "emulate",
            "--port", str(self.port), "--max-model-len", str(self.max_model_len),
            "--speedup", str(self.speedup), "--tokenizer", "bytes",
            "--served-model-name", MODEL, "--shutdown-grace", "0",
        ]  # fmt: skip
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=_env(),
                start_new_session=self.session,
            )  # fmt: skip
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("{") and "ready" in line:
                return
            if not line and self.proc.poll() is not None:
                break
        raise RuntimeError(f"emulator did not start (see {self.log})")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if self.stopped:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        self.stopped = False

    def pause(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)
            self.stopped = True

    def resume(self) -> None:
        if self.proc is not None and self.stopped:
            self.proc.send_signal(signal.SIGCONT)
            self.stopped = False


class ProxyThread:
    """`dualpool.testing.faultproxy.FaultProxy` on its own loop in a daemon thread."""

    def __init__(self, upstream_port: int, seed: int) -> None:
        from dualpool.testing.faultproxy import FaultProxy

        self.proxy = FaultProxy(("127.0.0.1", upstream_port), seed=seed)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.proxy.start())
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True, name="faultproxy").start()
        ready.wait(10)
        self.port = self.proxy.port

    def stop(self) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.proxy.stop(), self.loop)
        with contextlib.suppress(Exception):
            fut.result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)


@dataclass
class Fleet:
    """Short pool of `n_short`, long pool of `n_long` emulators behind one gateway."""

    n_short: int = 3
    n_long: int = 2
    speedup: float = 100.0
    proxied: tuple[int, ...] = ()  # short backends reached through a fault proxy
    gateway: dict[str, Any] = field(default_factory=dict)  # config overrides
    backends: list[Backend] = field(default_factory=list)
    proxies: dict[int, ProxyThread] = field(default_factory=dict)
    gw_proc: subprocess.Popen[bytes] | None = None
    gateway_src: str | None = None  # another checkout's src/ for the gateway process
    # Each process in a session of its own: with the kernel's autogroup scheduling each
    # then gets its own CPU group, as a container in its own cgroup would in a
    # deployment, instead of all of them sharing the benchmark's one group.
    own_sessions: bool = False
    # More models beside MODEL's two pools: {name: [pool, ...]} (config `models:`)
    extra_models: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    port: int = 0
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dualpool-rel-")))

    def start(self) -> Fleet:
        for i in range(self.n_short + self.n_long):
            long = i >= self.n_short
            b = Backend(
                LONG_LEN if long else SHORT_LEN, self.speedup, self.tmp, f"backend{i}",
                session=self.own_sessions,
            )  # fmt: skip
            self.backends.append(b)
        for b in self.backends:
            b.start()
        for i in self.proxied:
            self.proxies[i] = ProxyThread(self.backends[i].port, seed=i)
        self.start_gateway()
        return self

    def start_gateway(self) -> None:
        """(Again) a gateway process with `self.gateway` overrides."""
        self.port = free_port()
        cfg = self.config()
        path = self.tmp / "fleet.yaml"
        path.write_text(json.dumps(cfg))
        self.gw_log = self.tmp / "gateway.log"
        with open(self.gw_log, "ab") as log:
            self.gw_proc = subprocess.Popen(
                [sys.executable, "-m", "dualpool", "serve", "--config", str(path)],
                stdout=subprocess.DEVNULL, stderr=log, env=_env(self.gateway_src),
                start_new_session=self.own_sessions,
            )  # fmt: skip
        self.wait_ready()

    def url(self, i: int) -> str:
        port = self.proxies[i].port if i in self.proxies else self.backends[i].port
        return f"http://127.0.0.1:{port}"

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "listen": {"host": "127.0.0.1", "port": self.port},
            "model": MODEL,
            "pools": [
                {
                    "name": "short",
                    "endpoints": [self.url(i) for i in range(self.n_short)],
                    "max_model_len": SHORT_LEN,
                    "max_concurrency": 512,
                },
                {
                    "name": "long",
                    "endpoints": [self.url(i) for i in range(self.n_short, len(self.backends))],
                    "max_model_len": LONG_LEN,
                    "max_concurrency": 512,
                },
            ],
            "retries": {"same_pool": 2, "larger_pools": 1},
            "health": {"interval": 0.5, "metrics_interval": 0.5, "timeout": 1.0},
            "timeouts": {"connect": 1.0, "first_byte": 20.0, "idle": 20.0, "drain": 10.0},
            "log": {"level": "warning", "access": "debug"},
        }
        for k, v in self.gateway.items():
            if k == "pools":
                for p, extra in zip(cfg["pools"], v, strict=False):
                    p.update(extra)
            elif isinstance(v, dict) and isinstance(cfg.get(k), dict):
                cfg[k] = {**cfg[k], **v}
            else:
                cfg[k] = v
        if self.extra_models:
            models = {cfg.pop("model"): {"pools": cfg.pop("pools")}}
            models.update({name: {"pools": pools} for name, pools in self.extra_models.items()})
            cfg["models"] = models
        return cfg

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ready", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"gateway not ready (see {self.gw_log})")

    def gateway_pid(self) -> int:
        assert self.gw_proc is not None
        return self.gw_proc.pid

    def stop(self) -> None:
        if self.gw_proc is not None and self.gw_proc.poll() is None:
            self.gw_proc.send_signal(signal.SIGTERM)
            try:
                self.gw_proc.wait(15)
            except subprocess.TimeoutExpired:
                self.gw_proc.kill()
                self.gw_proc.wait()
        for p in self.proxies.values():
            p.stop()
        for b in self.backends:
            b.kill()

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- process measurements ---------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ---- the workload -------------------------------------------------------------------------

_WORDS = "the quick brown fox jumps over a lazy dog while paged attention keeps kv blocks".split()


def make_request(rng: random.Random, *, long_share: float = 0.12) -> tuple[bytes, bytes, bool]:
    """(path, body, stream): 80% chat, 50% streaming, `long_share` long prompts."""
    long = rng.random() < long_share
    n_bytes = rng.randint(9_000, 20_000) if long else rng.randint(50, 2_000)
    text = " ".join(rng.choices(_WORDS, k=n_bytes // 5))[:n_bytes]
    stream = rng.random() < 0.5
    body: dict[str, Any] = {"model": MODEL, "max_tokens": rng.randint(4, 24), "stream": stream}
    if rng.random() < 0.8:
        path = b"/v1/chat/completions"
        body["messages"] = [{"role": "user", "content": text}]
    else:
        path = b"/v1/completions"
        body["prompt"] = text
    return path, json.dumps(body).encode(), stream


# ---- the load generator -----------------------------------------------------------------


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # ok answers, seconds
    refusals: list[float] = field(default_factory=list)  # 429 latency, seconds
    lost_examples: list[str] = field(default_factory=list)
    five_xx_examples: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def head_bytes(path: bytes, body: bytes, port: int, extra: bytes = b"") -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n" % port
        + b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
        + extra + b"\r\n" + body
    )  # fmt: skip


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    """One HTTP/1.1 answer (Content-Length or chunked); IncompleteReadError on EOF."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if b":" in line:
            k, v = line.split(b":", 1)
            headers[k.strip().lower()] = v.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return status, headers, b"".join(parts)
    n = int(headers.get(b"content-length", b"0"))
    return status, headers, await reader.readexactly(n)


def judge(tally: Tally, status: int, body: bytes, stream: bool, dt: float) -> None:
    tally.statuses[status] += 1
    if status == 200:
        if stream and (b'"error"' in body and b'data: {"error"' in body):
            tally.counts["stream_error"] += 1
        elif stream and not body.rstrip().endswith(b"data: [DONE]"):
            tally.counts["lost"] += 1
            tally.lost_examples.append(f"stream without [DONE]: {body[-120:]!r}")
        else:
            tally.counts["ok"] += 1
            tally.latencies.append(dt)
    elif status == 429:
        tally.counts["http_429"] += 1
        tally.refusals.append(dt)
    elif status >= 500:
        tally.counts["http_5xx"] += 1
        if len(tally.five_xx_examples) < 10:
            tally.five_xx_examples.append(f"{status} {body[:200]!r}")
    else:
        tally.counts["http_4xx"] += 1


async def run_load(
    port: int,
    connections: int,
    *,
    total: int | None = None,
    seconds: float | None = None,
    seed: int = 0,
    make: Callable[[random.Random], tuple[bytes, bytes, bool]] = make_request,
    timeout: float = 60.0,
    rate: float | None = None,
    tally: Tally | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Tally:
    """`connections` keep-alive clients until `total` requests or `seconds` pass.

    `rate`: requests per second over all clients (open loop), else closed loop."""
    tally = tally if tally is not None else Tally()
    rng = random.Random(seed)
    issued = 0
    end = time.monotonic() + seconds if seconds is not None else float("inf")
    start = time.monotonic()

    def next_slot() -> float | None:
        nonlocal issued
        if (total is not None and issued >= total) or time.monotonic() >= end:
            return None
        issued += 1
        if on_progress is not None and issued % 1000 == 0:
            on_progress(issued)
        return start + issued / rate if rate else 0.0

    async def client() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while True:
            at = next_slot()
            if at is None:
                break
            if at:
                delay = at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            path, body, stream = make(rng)
            t = time.monotonic()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
                assert reader is not None
                writer.write(head_bytes(path, body, port))
                status, headers, answer = await asyncio.wait_for(read_answer(reader), timeout)
                judge(tally, status, answer, stream, time.monotonic() - t)
                if headers.get(b"connection", b"").lower() == b"close":
                    writer.close()
                    writer = None
            except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as exc:  # fmt: skip
                tally.counts["lost"] += 1
                if len(tally.lost_examples) < 10:
                    tally.lost_examples.append(f"{type(exc).__name__}: {exc}")
                if writer is not None:
                    writer.transport.abort()
                writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return tally
