"""`--transport native` (extproc/_h2.py) against an independent HTTP/2 client (h2).

Envoy exercises the common path (tests/extproc/test_extproc_envoy.py runs every test
on both transports); these cover what Envoy rarely does: tiny windows, PING,
RST_STREAM, a bad preface, padding, header blocks split over CONTINUATION frames.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("grpc", reason="the extproc extra (grpcio) is not installed")
pytest.importorskip(
    "envoy.service.ext_proc.v3.external_processor_pb2",
    reason="the extproc extra (xds-protos) is not installed",
)
pytest.importorskip("h2.connection", reason="h2 (the test oracle) is absent")
import h2.config
import h2.connection
import h2.events
import h2.settings
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from h2_oracle import GRPC_HEADERS, Client, ended

from dualpool.extproc import POOL_HEADER, ExtProcessor
from dualpool.extproc._h2 import PREFACE, H2Connection, serve_h2
from dualpool.gateway.testing import GatewayThread

CONFIG = {
    "model": "m",
    "pools": [
        {"name": "short", "endpoints": ["http://127.0.0.1:9"], "max_model_len": 4096},
        {"name": "long", "endpoints": ["http://127.0.0.1:11"], "max_model_len": 32768},
    ],
    "health": {"interval": 3600, "metrics_interval": 0},
    "log": {"level": "warning", "access": "debug"},
}


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[GatewayThread, ExtProcessor, int]]:
    with GatewayThread(CONFIG) as gw:
        proc = ExtProcessor(gw.gateway)
        srv, _ = gw.call(serve_h2(proc, "127.0.0.1", 0))
        yield gw, proc, srv.sockets[0].getsockname()[1]
        gw.run(srv.close)


def grpc_frame(msg: Any) -> bytes:
    raw = msg.SerializeToString()
    return b"\x00" + len(raw).to_bytes(4, "big") + raw


def request_messages() -> list[Any]:
    hdrs = pb.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[
                base_pb2.HeaderValue(key=":method", raw_value=b"POST"),
                base_pb2.HeaderValue(key=":path", raw_value=b"/v1/chat/completions"),
            ]
        )
    )
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    return [
        pb.ProcessingRequest(request_headers=hdrs),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)),
    ]


def messages(c: Client, sid: int) -> list[Any]:
    return [pb.ProcessingResponse.FromString(m) for m in c.raw_messages(sid)]


def test_a_stream_is_answered_message_by_message_with_grpc_trailers(
    server: tuple[GatewayThread, ExtProcessor, int],
) -> None:
    _, proc, port = server
    c = Client(port)
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, GRPC_HEADERS)
    c.conn.send_data(sid, b"".join(grpc_frame(m) for m in request_messages()), end_stream=True)
    c.flush()
    evs = c.read_until(ended(sid))
    resp = next(e for e in evs if isinstance(e, h2.events.ResponseReceived))
    assert dict(resp.headers)[b":status"] == b"200"
    assert dict(resp.headers)[b"content-type"] == b"application/grpc"
    trailers = next(e for e in evs if isinstance(e, h2.events.TrailersReceived))
    assert dict(trailers.headers)[b"grpc-status"] == b"0"
    first, second = messages(c, sid)
    assert first.WhichOneof("response") == "request_headers"
    sets = {
        h.header.key: h.header.raw_value
        for h in second.request_body.response.header_mutation.set_headers
    }
    assert sets == {POOL_HEADER: b"short"}
    assert proc.inflight == 0


def test_a_stream_with_nothing_to_answer_ends_trailers_only(
    server: tuple[GatewayThread, ExtProcessor, int],
) -> None:
    """The observer's streams (never answered) end with one header block carrying the
    status (gRPC's Trailers-Only), held for the next write or written alone shortly."""
    _, proc, port = server
    c = Client(port)
    observed = [
        pb.ProcessingRequest(
            observability_mode=True,
            response_headers=pb.HttpHeaders(
                headers=base_pb2.HeaderMap(
                    headers=[base_pb2.HeaderValue(key=":status", raw_value=b"200")]
                )
            ),
        ),
        pb.ProcessingRequest(
            observability_mode=True, response_body=pb.HttpBody(body=b"{}", end_of_stream=True)
        ),
    ]
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, GRPC_HEADERS)
    c.conn.send_data(sid, b"".join(grpc_frame(m) for m in observed))
    c.flush()
    evs = c.read_until(ended(sid))
    resp = [e for e in evs if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid]
    assert len(resp) == 1
    headers = dict(resp[0].headers)
    assert headers[b":status"] == b"200" and headers[b"grpc-status"] == b"0"
    assert ended(sid)(evs) and messages(c, sid) == []
    assert proc.inflight == 0


def test_small_windows_hold_data_until_window_updates(
    server: tuple[GatewayThread, ExtProcessor, int],
) -> None:
    _, proc, port = server
    # A 7-byte stream window: every answer must wait for WINDOW_UPDATEs (h2 sends
    # them as it acknowledges received data).
    c = Client(port, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 7})
    c.read_until(lambda evs: any(isinstance(e, h2.events.SettingsAcknowledged) for e in evs))
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, GRPC_HEADERS)
    c.conn.send_data(sid, b"".join(grpc_frame(m) for m in request_messages()), end_stream=True)
    c.flush()
    for _ in range(500):
        new = c.conn.receive_data(c.sock.recv(1 << 20))
        c.events += new
        for e in new:
            if isinstance(e, h2.events.DataReceived) and e.flow_controlled_length:
                c.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        c.flush()
        if ended(sid)(c.events):
            break
    assert ended(sid)(c.events)
    sizes = [len(e.data) for e in c.events if isinstance(e, h2.events.DataReceived)]
    assert max(sizes) <= 7 and len(messages(c, sid)) == 2
    assert proc.inflight == 0


def test_ping_is_acknowledged(server: tuple[GatewayThread, ExtProcessor, int]) -> None:
    c = Client(server[2])
    c.conn.ping(b"12345678")
    c.flush()
    evs = c.read_until(lambda evs: any(isinstance(e, h2.events.PingAckReceived) for e in evs))
    ack = next(e for e in evs if isinstance(e, h2.events.PingAckReceived))
    assert ack.ping_data == b"12345678"


def test_a_reset_stream_is_closed_in_the_processor(
    server: tuple[GatewayThread, ExtProcessor, int],
) -> None:
    gw, proc, port = server
    c = Client(port)
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, GRPC_HEADERS)
    c.conn.send_data(sid, grpc_frame(request_messages()[0]))
    c.flush()
    c.read_until(lambda evs: any(isinstance(e, h2.events.DataReceived) for e in evs))
    assert gw.run(lambda: proc.inflight) == 1
    c.conn.reset_stream(sid)
    c.flush()
    c.conn.ping(b"87654321")  # a round trip: the reset has been handled after it
    c.flush()
    c.read_until(lambda evs: any(isinstance(e, h2.events.PingAckReceived) for e in evs))
    assert gw.run(lambda: proc.inflight) == 0


def test_padding_and_continuation_frames(server: tuple[GatewayThread, ExtProcessor, int]) -> None:
    _, proc, port = server
    c = Client(port)
    sid = c.conn.get_next_available_stream_id()
    # Headers too large for one 16 KiB frame: h2 splits them into CONTINUATION frames.
    c.conn.send_headers(sid, [*GRPC_HEADERS, ("x-big", "v" * 40_000)])
    payload = b"".join(grpc_frame(m) for m in request_messages())
    c.conn.send_data(sid, payload, end_stream=True, pad_length=20)
    c.flush()
    c.read_until(ended(sid))
    assert len(messages(c, sid)) == 2
    assert proc.inflight == 0


def test_a_bad_preface_gets_goaway_and_close(
    server: tuple[GatewayThread, ExtProcessor, int],
) -> None:
    sock = socket.create_connection(("127.0.0.1", server[2]), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n" + b"x" * len(PREFACE))
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    # Our SETTINGS, then GOAWAY (type 7) with PROTOCOL_ERROR, then the close.
    assert b"\x07\x00\x00\x00\x00\x00" in data and data.endswith(b"\x00\x00\x00\x01")


def test_stream_ends_still_held_are_written_before_the_connection_closes(
    server: tuple[GatewayThread, ExtProcessor, int],
) -> None:
    """A held trailers-only end (an observer stream's) is not lost by a close (drain)."""
    gw, proc, _ = server

    class Transport:
        def __init__(self) -> None:
            self.data = b""
            self.closed = False

        def write(self, data: bytes) -> None:
            self.data += data

        def is_closing(self) -> bool:
            return self.closed

        def close(self) -> None:
            self.closed = True

    observed = pb.ProcessingRequest(
        observability_mode=True, response_body=pb.HttpBody(body=b"{}", end_of_stream=True)
    )
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    hello = client.data_to_send()
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, GRPC_HEADERS)
    client.send_data(sid, grpc_frame(observed))
    stream = client.data_to_send()

    async def drive() -> tuple[bytes, int, bool]:
        t = Transport()
        conn = H2Connection(proc, set())
        conn.connection_made(t)  # type: ignore[arg-type]
        conn.data_received(hello)
        conn.data_received(stream)  # nothing to answer: the stream's end is held
        before = len(t.data)
        conn.close()
        return t.data, before, t.closed

    data, before, closed = gw.call(drive())
    events = client.receive_data(data)
    assert closed
    assert any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid for e in events)
    assert b"grpc-status" not in data[:before] and b"grpc-status" in data[before:]
