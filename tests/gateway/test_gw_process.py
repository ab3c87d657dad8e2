"""`dualpool serve` as a process: SIGTERM drains streams, snapshots persist, memory stays bounded."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gw_helpers import FakeBackend, fleet_config

Factory = Callable[..., FakeBackend]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def serve(
    tmp_path: Path,
) -> Iterator[Callable[[dict[str, Any]], tuple[subprocess.Popen[str], int]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(cfg: dict[str, Any]) -> tuple[subprocess.Popen[str], int]:
        port = free_port()
        cfg = {**cfg, "listen": {"host": "127.0.0.1", "port": port}}
        path = tmp_path / "fleet.yaml"
        path.write_text(json.dumps(cfg))
        proc = subprocess.Popen(
            [sys.executable, "-m", "dualpool", "serve", "--config", str(path)],
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return proc, port
            except OSError:
                time.sleep(0.05)
        proc.kill()
        raise RuntimeError(
            f"dualpool serve did not start: {proc.stderr.read() if proc.stderr else ''}"
        )

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(5)


def body(n: int = 200, **extra: Any) -> bytes:
    return json.dumps(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "word " * (n // 5)}],
            "max_tokens": 8,
            **extra,
        }
    ).encode()


def test_sigterm_lets_streams_finish_then_exits_0(
    backend_factory: Factory,
    serve: Callable[[dict[str, Any]], tuple[subprocess.Popen[str], int]],
    tmp_path: Path,
) -> None:
    short = backend_factory(4096, output_tokens=20, token_delay=0.05)  # a ~1 s stream
    long = backend_factory(32768)
    snap = tmp_path / "calibrator.json"
    cfg = fleet_config(short, long, calibrator={"snapshot": str(snap), "save_interval": 0})
    proc, port = serve(cfg)
    result: dict[str, Any] = {}

    def stream() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conn.request(
            "POST",
            "/v1/chat/completions",
            body(stream=True, max_tokens=20),
            {"content-type": "application/json"},
        )
        r = conn.getresponse()
        result["status"] = r.status
        result["body"] = r.read()

    t = threading.Thread(target=stream)
    t.start()
    deadline = time.monotonic() + 10
    while short.stats()["requests"] < 1:  # the stream is under way (at the backend)
        assert time.monotonic() < deadline, "the stream never reached the backend"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    with pytest.raises(OSError):  # no longer accepting
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    t.join(15)
    assert proc.wait(15) == 0
    assert result["status"] == 200
    events = [e for e in result["body"].split(b"\n\n") if e]
    assert len(events) == 21 and events[-1] == b"data: [DONE]"  # complete, usage chunk removed
    saved = json.loads(snap.read_text())  # saved on shutdown
    assert saved["counters"]["accepted"] + saved["counters"]["overhead_only"] == 1


def test_memory_stays_bounded_under_overload(
    backend_factory: Factory, serve: Callable[[dict[str, Any]], tuple[subprocess.Popen[str], int]]
) -> None:
    short = backend_factory(4096)
    long = backend_factory(32768)
    short.control(delay=0.1)
    long.control(delay=0.1)
    cfg = fleet_config(short, long, backpressure={"max_wait": 0.05})
    for p in cfg["pools"]:
        p.update(max_concurrency=4, max_queue=4)
    proc, port = serve(cfg)

    def rss_kb() -> int:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    payload = body(2000)
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%b" % (len(payload), payload)
    )

    def blast(rounds: int) -> dict[int, int]:
        # 64 connections, each pipelining 8 requests, read back and close.
        counts: dict[int, int] = {}
        for _ in range(rounds):
            socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(64)]
            for s in socks:
                s.sendall(request * 8)
            for s in socks:
                s.shutdown(socket.SHUT_WR)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                for status in (200, 429):
                    counts[status] = counts.get(status, 0) + data.count(b"HTTP/1.1 %d" % status)
                s.close()
        return counts

    blast(1)
    before = rss_kb()
    counts = blast(2)
    after = rss_kb()
    assert counts.get(429, 0) > 0 and counts.get(200, 0) > 0
    assert sum(counts.values()) == 2 * 64 * 8  # every request got exactly one answer
    assert after - before < 20_000, (before, after)  # KiB: no growth with requests served
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(15) == 0
