"""DNS discovery against a real DNS server (dnslib) whose answers change while the
gateway runs: backends join and leave, a failed lookup keeps the last answer."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gw_helpers import FakeBackend, GatewayThread
from redis_helpers import free_port

dnslib = pytest.importorskip("dnslib", reason="pip install dnslib")
from dnslib import QTYPE, RCODE, RR, A  # noqa: E402
from dnslib.server import BaseResolver, DNSServer  # noqa: E402

NAME = "vllm-short.dualpool.test."


class Records(BaseResolver):  # type: ignore[misc]
    """Answers NAME's A query with whatever `addresses` holds now; None: NXDOMAIN."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.addresses: list[str] | None = []
        self.queries = 0

    def set(self, addresses: list[str] | None) -> None:
        with self.lock:
            self.addresses = addresses

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        with self.lock:
            self.queries += 1
            addrs = self.addresses
        if str(request.q.qname) != NAME or addrs is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.A:
            for a in addrs:
                reply.add_answer(RR(NAME, QTYPE.A, rdata=A(a), ttl=1))
        return reply


@pytest.fixture
def dns() -> Iterator[tuple[Records, int]]:
    records = Records()
    port = free_port()
    quiet = dnslib.server.DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data")
    server = DNSServer(records, port=port, address="127.0.0.1", tcp=False, logger=quiet)
    server.start_thread()
    yield records, port
    server.stop()


class HostBackend(FakeBackend):
    """A fake vLLM on another loopback address (127.0.0.x) and a given port."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(4096, host=host)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def on(host: str, port: int) -> FakeBackend:
    return HostBackend(host, port).start()


def backends(gw: GatewayThread) -> list[str]:
    with urllib.request.urlopen(f"{gw.url}/admin/backends", timeout=5) as r:
        pools = json.loads(r.read())["pools"]
    return sorted(b["backend"] for b in pools["short"]["backends"])


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def chat(gw: GatewayThread) -> int:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi " * 50}], "max_tokens": 4}
    req = urllib.request.Request(
        f"{gw.url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()
        return int(r.status)


def test_backends_follow_the_dns_answers(
    dns: tuple[Records, int], backend_factory: Callable[..., FakeBackend]
) -> None:
    records, dns_port = dns
    port = free_port()
    b2, b3 = on("127.0.0.2", port), on("127.0.0.3", port)
    long = backend_factory(32768)
    records.set(["127.0.0.2"])
    try:
        gw = GatewayThread(
            {
                "model": "m",
                "pools": [
                    {
                        "name": "short",
                        "max_model_len": 4096,
                        "dns": {
                            "name": NAME,
                            "port": port,
                            "interval": 0.1,
                            "server": f"127.0.0.1:{dns_port}",
                        },
                    },
                    {"name": "long", "endpoints": [long.url], "max_model_len": 32768},
                ],
                "health": {"interval": 0.2, "metrics_interval": 0},
                "log": {"level": "error", "access": "debug"},
            }
        )
        try:
            assert backends(gw) == [f"127.0.0.2:{port}"]  # resolved at start
            assert chat(gw) == 200 and b2.stats()["requests"] == 1
            records.set(["127.0.0.2", "127.0.0.3"])  # a pod joins
            wait_for(lambda: len(backends(gw)) == 2)
            records.set(["127.0.0.3"])  # the first one leaves
            wait_for(lambda: backends(gw) == [f"127.0.0.3:{port}"])
            before = b3.stats()["requests"]
            for _ in range(3):
                assert chat(gw) == 200
            assert b3.stats()["requests"] == before + 3
            assert b2.stats()["requests"] == 1
            records.set(None)  # the name vanishes: keep the last known backends
            seen = records.queries
            wait_for(lambda: records.queries >= seen + 4)
            assert backends(gw) == [f"127.0.0.3:{port}"]
            assert chat(gw) == 200
        finally:
            gw.stop()
    finally:
        b2.kill()
        b3.kill()
