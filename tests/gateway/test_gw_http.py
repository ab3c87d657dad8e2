"""The gateway over dualpool.http: what a client and a backend see at the HTTP level.

The backend here is h11 (an independent implementation) in a thread, so the gateway's
upstream side meets answers our own code never writes: interim 1xx, HTTP/1.0.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import h11
import pytest
from gw_helpers import GatewayThread
from prometheus_client.parser import text_string_to_metric_families

COMPLETION = json.dumps(
    {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
    }
).encode()


class H11Backend:
    """An h11 server in a thread; `mode` picks how it answers; records request heads."""

    def __init__(self) -> None:
        self.mode = "interim"
        self.heads: list[list[tuple[bytes, bytes]]] = []
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.port = 0

        async def start() -> None:
            server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(start(), self.loop)
        ready.wait(5)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(our_role=h11.SERVER)
        served = 0
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await reader.read(65536)
                if not data:
                    return
                conn.receive_data(data)
                continue
            if isinstance(ev, h11.Request):
                self.heads.append(list(ev.headers))
            if not isinstance(ev, h11.EndOfMessage):
                continue
            served += 1
            if self.mode == "close_reused" and served > 1:
                # The keep-alive race: the peer closes an idle connection just as
                # the next request is written to it.
                writer.close()
                return
            if self.mode == "http10":
                writer.write(b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n")
                writer.write(COMPLETION)
                await writer.drain()
                writer.close()
                return
            out = b""
            if self.mode == "interim":
                out += conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
                out += conn.send(h11.InformationalResponse(status_code=103, headers=[])) or b""
            out += (
                conn.send(
                    h11.Response(
                        status_code=200,
                        headers=[
                            (b"content-type", b"application/json"),
                            (b"content-length", b"%d" % len(COMPLETION)),
                        ],
                    )
                )
                or b""
            )
            out += conn.send(h11.Data(data=COMPLETION)) or b""
            out += conn.send(h11.EndOfMessage()) or b""
            writer.write(out)
            await writer.drain()
            conn.start_next_cycle()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def h11_gateway(
    caplog: pytest.LogCaptureFixture,
) -> Iterator[tuple[GatewayThread, H11Backend]]:
    caplog.set_level(logging.INFO, logger="dualpool.access")  # before the gateway starts
    backend = H11Backend()
    url = f"http://127.0.0.1:{backend.port}"
    gw = GatewayThread(
        {
            "model": "m",
            "pools": [
                {"name": "short", "endpoints": [url], "max_model_len": 4096},
                {"name": "long", "endpoints": [url], "max_model_len": 32768},
            ],
            "health": {"interval": 60, "metrics_interval": 0},
            "timeouts": {"connect": 1.0, "first_byte": 5.0, "idle": 5.0, "drain": 1.0},
            "log": {"level": "warning", "access": "info"},
        }
    )
    yield gw, backend
    gw.stop()
    backend.stop()


def exchange(gw: GatewayThread, data: bytes, method: bytes = b"POST") -> tuple[h11.Response, bytes]:
    """One request (raw bytes) to the gateway; the answer as h11 parses it."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(data)
        conn = h11.Connection(our_role=h11.CLIENT)
        conn.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"x")]))
        conn.send(h11.EndOfMessage())
        resp: Any = None
        body = b""
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(s.recv(65536))
            elif isinstance(ev, h11.Response):
                resp = ev
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                return resp, body


def chat_request(extra_headers: bytes = b"", path: bytes = b"/v1/chat/completions") -> bytes:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    return (
        b"POST " + path + b" HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n" % len(body) + extra_headers + b"\r\n" + body
    )


@pytest.mark.parametrize("mode", ["interim", "http10"])
def test_backend_1xx_skipped_and_http10_body_read(
    h11_gateway: tuple[GatewayThread, H11Backend], mode: str
) -> None:
    gw, backend = h11_gateway
    backend.mode = mode
    resp, body = exchange(gw, chat_request())
    assert resp.status_code == 200
    assert json.loads(body)["usage"]["prompt_tokens"] == 10


def test_cookies_and_forwarded_headers_stay_with_the_gateway(
    h11_gateway: tuple[GatewayThread, H11Backend], caplog: pytest.LogCaptureFixture
) -> None:
    gw, backend = h11_gateway
    backend.mode = "plain"
    extra = (
        b"cookie: session=secret\r\nx-forwarded-for: 6.6.6.6\r\nforwarded: for=6.6.6.6\r\n"
        b"x-request-id: keep-me\r\n"
    )
    resp, _ = exchange(gw, chat_request(extra, b"/v1/chat/completions?api_key=sk-secret"))
    assert resp.status_code == 200
    names = {k for k, _ in backend.heads[-1]}
    assert b"cookie" not in names and b"x-forwarded-for" not in names
    assert b"forwarded" not in names and b"x-request-id" in names
    gw.run(lambda: None)  # the access line is written just after the answer
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "sk-secret" not in logged and "/v1/chat/completions" in logged


def test_head_date_and_metrics_exposition(h11_gateway: tuple[GatewayThread, H11Backend]) -> None:
    gw, backend = h11_gateway
    backend.mode = "plain"
    exchange(gw, chat_request())
    for path in (b"/v1/models", b"/metrics", b"/health"):
        resp, body = exchange(gw, b"HEAD " + path + b" HTTP/1.1\r\nhost: x\r\n\r\n", b"HEAD")
        assert resp.status_code == 200 and body == b""
        date = dict(resp.headers)[b"date"].decode()
        assert email.utils.parsedate_to_datetime(date) is not None
    resp, body = exchange(gw, b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n", b"GET")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert not [f.name for f in families.values() if f.type == "unknown"]
    requests = families["dualpool_requests"]
    assert requests.type == "counter"
    assert {s.name for s in requests.samples} == {"dualpool_requests_total"}
    assert families["dualpool_upstream_ttft_seconds"].type == "histogram"


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 1000 + b"]" * 1000,
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": '
        + b"9" * 4300
        + b"}",
        b"\xff\xfe",
        b'{"messages": [{"role": "user", "content": [{"type": []}]}]}',
    ],
)
def test_hostile_bodies_get_400_not_500(
    h11_gateway: tuple[GatewayThread, H11Backend], body: bytes
) -> None:
    gw, _ = h11_gateway
    data = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)
        + body
    )
    resp, answer = exchange(gw, data)
    assert resp.status_code == 400, answer
    assert json.loads(answer)["error"]["code"] == 400


def test_drain_deadline_ends_streams_with_an_error_event_and_the_chunked_end(
    backend_factory: Any,
) -> None:
    from gw_helpers import fleet_config

    short = backend_factory(4096, output_tokens=200, token_delay=0.05)
    long = backend_factory(32768, output_tokens=200, token_delay=0.05)
    # 200 tokens: 10 s, far past the drain deadline
    gw = GatewayThread(fleet_config(short, long, timeouts={"drain": 0.3}))
    body = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    ).encode()
    data = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%b" % (len(body), body)
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(data)
        conn = h11.Connection(our_role=h11.CLIENT)
        conn.send(h11.Request(method=b"POST", target=b"/", headers=[(b"host", b"x")]))
        conn.send(h11.EndOfMessage())
        got = b""
        while b"data: " not in got:  # the stream has started
            conn.receive_data(s.recv(65536))
            while (ev := conn.next_event()) not in (h11.NEED_DATA,):
                if isinstance(ev, h11.Data):
                    got += ev.data
        stopper = threading.Thread(target=gw.stop)
        stopper.start()
        ended = False
        while not ended:
            conn.receive_data(s.recv(65536))
            while (ev := conn.next_event()) is not h11.NEED_DATA:
                if isinstance(ev, h11.Data):
                    got += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    ended = True
                    break
                elif isinstance(ev, h11.ConnectionClosed):
                    raise AssertionError(f"closed without the chunked end: {got[-300:]!r}")
        stopper.join(10)
    events = [e for e in got.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert len(events) < 100, events[-3:]  # cut short
    error = json.loads(events[-2].removeprefix("data: ")).get("error", events[-3:])
    assert error["code"] == 503 and "shutting down" in error["message"]


def test_a_backend_that_accepts_and_closes_is_failed_over(backend_factory: Any) -> None:
    """Issue 16, defect 1: not a 500; the next backend of the pool answers."""
    from gw_helpers import fleet_config

    good = backend_factory(4096)
    long = backend_factory(32768)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    stop = threading.Event()

    def slam() -> None:
        lsock.settimeout(0.1)
        while not stop.is_set():
            try:
                c, _ = lsock.accept()
            except TimeoutError:
                continue
            c.close()

    t = threading.Thread(target=slam, daemon=True)
    t.start()

    class Bad:
        url = f"http://127.0.0.1:{lsock.getsockname()[1]}"

    cfg = fleet_config([Bad(), good], long, health={"interval": 60})  # type: ignore[list-item]
    cfg["model"] = "m"
    cfg["pools"][0]["max_model_len"] = 4096
    cfg["pools"][1]["max_model_len"] = 32768
    gw = GatewayThread(cfg)
    try:
        for _ in range(4):
            resp, body = exchange(gw, chat_request())
            assert resp.status_code == 200, body
    finally:
        gw.stop()
        stop.set()
        t.join(2)
        lsock.close()


def test_stale_keep_alive_connection_is_retried_fresh_without_blame(
    h11_gateway: tuple[GatewayThread, H11Backend],
) -> None:
    gw, backend = h11_gateway
    backend.mode = "close_reused"
    for _ in range(4):
        resp, _ = exchange(gw, chat_request())
        assert resp.status_code == 200
    states = gw.run(lambda: [(b.failures, b.healthy) for p in gw.gateway.pools for b in p.backends])
    assert states == [(0, True), (0, True)]
