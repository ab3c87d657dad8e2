"""Raw bytes at the server (hypothesis): every answer is valid HTTP/1.1 for h11, no 5xx."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualpool.http import Exchange, HttpServer, Request, ServerLimits


class Echo:
    def error_body(self, status: int, message: str) -> bytes:
        return json.dumps({"error": {"message": message, "code": status}}).encode()

    def handle(self, req: Request, ex: Exchange) -> None:
        if req.path == b"/stream":
            ex.start_stream(200, b"text/plain")
            ex.write(req.body)
            ex.end()
        else:
            ex.send(200, req.body, content_type=b"application/octet-stream")


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: list[int] = []

    async def start() -> None:
        server = HttpServer(Echo(), ServerLimits(max_body_bytes=4096, head_timeout=2.0))
        box.append(await server.listen("127.0.0.1", 0))
        ready.set()

    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    asyncio.run_coroutine_threadsafe(start(), loop)
    ready.wait(5)
    yield box[0]
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)


_TOKEN = st.text("abcdefghijklmnopqrstuvwxyz-_0123456789", min_size=1, max_size=12)
_VALUE = st.binary(max_size=40)
_HEADERS = st.lists(st.tuples(_TOKEN, _VALUE), max_size=8)
_FRAMING = st.sampled_from(["cl", "chunked", "none", "both", "bad-cl", "bad-chunk"])


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    # (HEAD is left to the conformance tests: h11 must know a request was HEAD.)
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"OPTIONS", b"G T", b""]))
    path = draw(st.sampled_from([b"/", b"/stream", b"/x?y=1"]) | st.binary(max_size=20))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTX/1.1"]))
    body = draw(st.binary(max_size=300))
    head = [method + b" " + path + b" " + version, b"host: x"]
    head += [k.encode() + b": " + v for k, v in draw(_HEADERS)]
    framing = draw(_FRAMING)
    if framing == "cl":
        head.append(b"content-length: %d" % len(body))
    elif framing == "chunked":
        head.append(b"transfer-encoding: chunked")
        body = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    elif framing == "both":
        head += [b"content-length: %d" % len(body), b"transfer-encoding: chunked"]
    elif framing == "bad-cl":
        head.append(b"content-length: 1x")
    elif framing == "bad-chunk":
        head.append(b"transfer-encoding: chunked")
        body = b"zz\r\n" + body
    else:
        body = b""
    return b"\r\n".join(head) + b"\r\n\r\n" + body


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests(), min_size=1, max_size=3))
def test_any_bytes_get_valid_answers_and_never_5xx(port: int, batch: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"".join(batch))
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    # h11 as the client reads whatever came back: every answer well-formed.
    conn = h11.Connection(our_role=h11.CLIENT)
    conn.receive_data(data)
    conn.receive_data(b"")
    statuses: list[int] = []
    while True:
        if conn.our_state is h11.IDLE:
            conn.send(h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"x")]))
            conn.send(h11.EndOfMessage())
        ev = conn.next_event()
        if isinstance(ev, h11.Response):
            statuses.append(ev.status_code)
        elif isinstance(ev, h11.EndOfMessage):
            left, _ = conn.trailing_data
            if conn.their_state is h11.MUST_CLOSE or conn.our_state is h11.MUST_CLOSE or not left:
                break
            conn.start_next_cycle()
        elif ev is h11.NEED_DATA or isinstance(ev, h11.ConnectionClosed) or ev is h11.PAUSED:
            break
    assert statuses, data[:200]
    assert all(s < 500 or s in (501, 505) for s in statuses), statuses
