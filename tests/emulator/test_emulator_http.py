"""The emulator's HTTP as vLLM's uvicorn behaves, judged by h11 (shared dualpool.http)."""

from __future__ import annotations

import json
import socket
import time

import h11

from dualpool.emulator.testing import EmulatorThread


class _Reader:
    """h11 reading the answers on one connection, cycle after cycle."""

    def __init__(self, s: socket.socket) -> None:
        self.s = s
        self.conn = h11.Connection(our_role=h11.CLIENT)

    def answer(self, method: bytes) -> tuple[h11.Response, list[int], bytes]:
        conn = self.conn
        if conn.our_state is h11.DONE:
            conn.start_next_cycle()
        conn.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"x")]))
        conn.send(h11.EndOfMessage())
        infos: list[int] = []
        resp = None
        body = b""
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(self.s.recv(65536))
            elif isinstance(ev, h11.InformationalResponse):
                infos.append(ev.status_code)
            elif isinstance(ev, h11.Response):
                resp = ev
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                assert resp is not None
                return resp, infos, body


def _answer(s: socket.socket, method: bytes) -> tuple[h11.Response, list[int], bytes]:
    return _Reader(s).answer(method)


def test_head_is_405_without_a_body_and_the_connection_stays_in_step(emu: EmulatorThread) -> None:
    port = emu.ports[0]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"HEAD /v1/models HTTP/1.1\r\nhost: x\r\n\r\nGET /health HTTP/1.1\r\nhost: x\r\n\r\n"
        )
        reader = _Reader(s)
        resp, _, body = reader.answer(b"HEAD")
        assert resp.status_code == 405 and body == b""
        assert dict(resp.headers)[b"server"] == b"uvicorn" and b"date" in dict(resp.headers)
        resp, _, _ = reader.answer(b"GET")
        assert resp.status_code == 200


def test_100_continue_then_the_completion(emu: EmulatorThread) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    with socket.create_connection(("127.0.0.1", emu.ports[0]), timeout=10) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"expect: 100-continue\r\ncontent-length: %d\r\n\r\n" % len(body)
        )
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(body)
        data = b""
        while b"usage" not in data:
            data += s.recv(65536)
        assert data.startswith(b"HTTP/1.1 200 OK")


def test_limits_and_idle_keep_alive_close(emu: EmulatorThread) -> None:
    port = emu.ports[0]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n" + b"x-h: v\r\n" * 5000 + b"\r\n")
        resp, _, _ = _answer(s, b"GET")
        assert resp.status_code == 431
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        _answer(s, b"GET")
        t0 = time.monotonic()
        assert s.recv(10) == b""  # closed by the emulator, as vLLM does after ~5 s
        assert 4.0 <= time.monotonic() - t0 <= 8.0
