"""Three `dualpool serve` processes sharing calibration through a real redis-server.

Convergence, a fresh replica routing with the fleet's ratios from its first
request, a Redis outage (routing goes on, one log line, rejoin), a restart under
the same name, and no lost or double-counted samples: after a round, every
replica's sample count equals the accepted feedback summed over the replicas.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gw_helpers import FakeBackend
from redis_helpers import RedisServer, free_port, need_redis

pytestmark = pytest.mark.slow

BYTES_PER_TOKEN = 2.5  # what the fake backends count; the prior is 4.0


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(need_redis(), tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def backends() -> Iterator[tuple[FakeBackend, FakeBackend]]:
    short = FakeBackend(4096, bytes_per_token=BYTES_PER_TOKEN).start()
    long = FakeBackend(32768, bytes_per_token=BYTES_PER_TOKEN).start()
    yield short, long
    short.kill()
    long.kill()


class Replica:
    def __init__(self, cfg: dict[str, Any], port: int, workdir: Path) -> None:
        self.cfg = cfg
        self.port = port
        self.workdir = workdir
        self.log = workdir / f"gateway-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Replica:
        path = self.workdir / f"fleet-{self.port}.yaml"
        path.write_text(
            json.dumps({**self.cfg, "listen": {"host": "127.0.0.1", "port": self.port}})
        )
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dualpool", "serve", "--config", str(path)], stderr=err
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                get(self.port, "/health")
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"gateway did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)

    def samples(self) -> int:
        cats = get(self.port, "/admin/calibrator")["categories"]
        return sum(c["samples"] for c in cats)

    def bytes_per_token(self) -> float:
        cats = get(self.port, "/admin/calibrator")["categories"]
        return float(next(c["bytes_per_token"] for c in cats if c["class"] == "prose"))

    def accepted(self) -> int:
        return int(get(self.port, "/admin/calibrator")["feedback"]["accepted"])


def get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        raw = r.read()
    return json.loads(raw) if path.startswith("/admin") else raw


def chat(port: int, nbytes: int) -> str:
    words = "the quick brown fox jumps over a lazy dog while " * (nbytes // 48 + 1)
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": words[:nbytes]}],
        "max_tokens": 16,
    }
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()
        return str(r.headers["x-dualpool-pool"])


@pytest.fixture
def fleet(
    tmp_path: Path, redis_server: RedisServer, backends: tuple[FakeBackend, FakeBackend]
) -> Iterator[Callable[..., Replica]]:
    short, long = backends
    started: list[Replica] = []
    cfg = {
        "pools": [
            {"name": "short", "endpoints": [short.url], "max_model_len": 4096},
            {"name": "long", "endpoints": [long.url], "max_model_len": 32768},
        ],
        "model": "m",
        "health": {"interval": 0.5, "metrics_interval": 0},
        "log": {"level": "info", "access": "debug"},
        "calibrator": {
            "shared": {"url": redis_server.url, "interval": 0.2, "timeout": 0.5, "grace": 30}
        },
    }

    def make(port: int | None = None) -> Replica:
        r = Replica(cfg, port or free_port(), tmp_path).start()
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    assert cond(), getattr(cond, "last", None)


def converged(replicas: list[Replica], expected: int | None = None) -> Callable[[], bool]:
    """Every replica holds every accepted sample of the fleet, once."""

    def check() -> bool:
        total = sum(r.accepted() for r in replicas) if expected is None else expected
        seen = [r.samples() for r in replicas]
        check.last = (total, seen)  # type: ignore[attr-defined]
        return all(n == total for n in seen)

    return check


def traffic(replica: Replica, n: int, rng: random.Random) -> None:
    for _ in range(n):
        chat(replica.port, rng.randint(300, 3000))


def test_a_fresh_replica_routes_with_the_fleets_ratios_from_its_first_request(
    fleet: Callable[..., Replica],
) -> None:
    rng = random.Random(1)
    a, b = fleet(), fleet()
    traffic(a, 40, rng)
    traffic(b, 20, rng)
    wait_for(converged([a, b]))
    learned = a.bytes_per_token()
    assert abs(learned - BYTES_PER_TOKEN) < 0.1
    c = fleet()
    # Before any request of its own, c routes with the fleet's ratio: 12,000 bytes are
    # ~4,800 tokens at 2.5 bytes/token (over the short pool's 4,096), 3,000 at the
    # 4.0 prior. Sent straight to long, no misroute.
    assert c.samples() == a.samples() and c.accepted() == 0
    assert abs(c.bytes_per_token() - learned) < 1e-9
    assert chat(c.port, 12_000) == "long"
    assert b"dualpool_misroutes_total{" not in get(c.port, "/metrics")
    wait_for(converged([a, b, c]))


def test_redis_outage_keeps_routing_logs_one_line_and_rejoins(
    fleet: Callable[..., Replica], redis_server: RedisServer
) -> None:
    rng = random.Random(2)
    a, b, c = fleet(), fleet(), fleet()
    traffic(a, 15, rng)
    wait_for(converged([a, b, c]))
    redis_server.stop()
    time.sleep(1.0)
    traffic(b, 15, rng)  # served while Redis is away
    traffic(c, 5, rng)
    time.sleep(1.0)
    redis_server.start()  # empty: every replica publishes its own statistics again
    # Each replica notices on its next sync and republishes: seconds on a loaded machine.
    wait_for(converged([a, b, c]), timeout=30.0)
    assert sum(r.accepted() for r in (a, b, c)) == 35
    for r in (a, b, c):
        lines = r.log.read_text().splitlines()
        assert sum("unavailable" in ln for ln in lines) == 1, r.log.read_text()
        assert sum("Redis back" in ln for ln in lines) == 1


def test_a_replica_restarted_under_its_name_takes_its_samples_back(
    fleet: Callable[..., Replica],
) -> None:
    rng = random.Random(3)
    a, b, c = fleet(), fleet(), fleet()
    traffic(a, 20, rng)
    traffic(b, 10, rng)
    wait_for(converged([a, b, c]))
    port = a.port
    a.stop()
    a2 = fleet(port)  # same hostname:port, so the same replica id
    assert a2.samples() == 30 and a2.accepted() == 0
    traffic(a2, 5, rng)
    wait_for(converged([a2, b, c], 35))  # a's 20 taken back, not lost nor counted twice
