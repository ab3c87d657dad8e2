"""The ext_proc state machine phase by phase, without Envoy: the real `Process` method
driven with the protobuf messages Envoy sends, over a real gateway's router and pools."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("grpc", reason="the extproc extra (grpcio) is not installed")
pytest.importorskip(
    "envoy.service.ext_proc.v3.external_processor_pb2",
    reason="the extproc extra (xds-protos) is not installed",
)

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from dualpool.cli.main import main
from dualpool.extproc import DESTINATION_HEADER, LB_NAMESPACE, POOL_HEADER, ExtProcessor
from dualpool.extproc import _messages as m
from dualpool.gateway.testing import GatewayThread

CONFIG = {
    "model": "m",
    "pools": [
        {
            "name": "short",
            "endpoints": ["http://127.0.0.1:9", "http://127.0.0.1:10"],
            "max_model_len": 4096,
        },
        {"name": "long", "endpoints": ["http://127.0.0.1:11"], "max_model_len": 32768},
    ],
    # Nothing listens at those ports: keep the probes from taking the backends out.
    "health": {"interval": 3600, "metrics_interval": 0},
    "log": {"level": "warning", "access": "debug"},
}


@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayThread]:
    with GatewayThread(CONFIG) as g:
        yield g


def headers(*kv: tuple[str, bytes], eos: bool = False) -> Any:
    return pb.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v) for k, v in kv]
        ),
        end_of_stream=eos,
    )


def req_headers(path: bytes = b"/v1/chat/completions", *extra: tuple[str, bytes]) -> Any:
    return pb.ProcessingRequest(
        request_headers=headers((":method", b"POST"), (":path", path), *extra)
    )


def req_body(obj: Any) -> Any:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=raw, end_of_stream=True))


def resp_headers(status: int, ctype: bytes) -> Any:
    return pb.ProcessingRequest(
        response_headers=headers((":status", str(status).encode()), ("content-type", ctype))
    )


def resp_body(data: bytes, eos: bool) -> Any:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=data, end_of_stream=eos))


def run(gw: GatewayThread, proc: ExtProcessor, msgs: list[Any]) -> list[Any]:
    async def it() -> AsyncIterator[Any]:
        for msg in msgs:
            yield msg

    async def drive() -> list[Any]:
        return [r async for r in proc.Process(it(), None)]

    out: list[Any] = gw.call(drive())
    return out


def set_headers(common: Any) -> dict[str, bytes]:
    return {h.header.key: h.header.raw_value for h in common.header_mutation.set_headers}


def counter(proc: ExtProcessor, name: str, *labels: str) -> float:
    return float(getattr(proc.metrics, name).value(*labels))


def chat(content: str, **kw: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **kw}


def test_a_short_request_is_routed_and_its_usage_learned(gw: GatewayThread) -> None:
    proc = ExtProcessor(gw.gateway)
    usage = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}
    answer = json.dumps({"choices": [{"message": {"content": "hi"}}], "usage": usage}).encode()
    fed = counter(proc, "feedback", "overhead_only") + counter(proc, "feedback", "accepted")
    out = run(
        gw,
        proc,
        [
            req_headers(),
            req_body(chat("hello there", max_tokens=8)),
            resp_headers(200, b"application/json"),
            resp_body(answer, True),
        ],
    )
    assert out[0] is m.CONTINUE_REQUEST_HEADERS
    common = out[1].request_body.response
    assert set_headers(common) == {POOL_HEADER: b"short"}
    assert common.clear_route_cache
    assert not common.HasField("body_mutation")  # not a stream: the body goes as it came
    assert out[2].mode_override.response_body_mode == m.BUFFERED
    assert set_headers(out[2].response_headers.response) == {POOL_HEADER: b"short"}
    assert out[3] is m.CONTINUE_RESPONSE_BODY
    after = counter(proc, "feedback", "overhead_only") + counter(proc, "feedback", "accepted")
    assert after == fed + 1
    assert counter(proc, "requests", "short", "ok") >= 1
    assert all(p.inflight == 0 for p in proc.pools)


def test_a_stream_asks_for_usage_reads_it_and_strips_the_extra_event(gw: GatewayThread) -> None:
    proc = ExtProcessor(gw.gateway)
    chunk = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    usage_event = (
        b'data: {"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":1,'
        b'"total_tokens":12}}\n\n'
    )
    done = b"data: [DONE]\n\n"
    out = run(
        gw,
        proc,
        [
            req_headers(),
            req_body(chat("hi", max_tokens=1, stream=True, stream_options={"x": 1})),
            resp_headers(200, b"text/event-stream"),
            resp_body(chunk, False),
            resp_body(usage_event + done, False),
            resp_body(b"", True),
        ],
    )
    common = out[1].request_body.response
    sent = json.loads(common.body_mutation.body)
    assert sent["stream_options"] == {"x": 1, "include_usage": True}
    assert set_headers(common)["content-length"] == str(len(common.body_mutation.body)).encode()
    assert out[2].mode_override.response_body_mode == m.STREAMED
    assert "content-length" in out[2].response_headers.response.header_mutation.remove_headers
    assert out[3] is m.CONTINUE_RESPONSE_BODY  # passes as it came
    assert out[4].response_body.response.body_mutation.body == done  # usage event gone
    assert counter(proc, "requests", "short", "ok") >= 1


def test_a_client_that_asked_for_usage_gets_it(gw: GatewayThread) -> None:
    proc = ExtProcessor(gw.gateway)
    body = chat("hi", max_tokens=1, stream=True, stream_options={"include_usage": True})
    usage_event = b'data: {"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":1}}\n\n'
    out = run(
        gw,
        proc,
        [
            req_headers(),
            req_body(body),
            resp_headers(200, b"text/event-stream"),
            resp_body(usage_event, True),
        ],
    )
    assert not out[1].request_body.response.HasField("body_mutation")
    assert out[3] is m.CONTINUE_RESPONSE_BODY


def test_over_length_is_answered_by_the_processor_with_vllms_error(gw: GatewayThread) -> None:
    proc = ExtProcessor(gw.gateway)
    out = run(gw, proc, [req_headers(), req_body(chat("word " * 60_000, max_tokens=33_000))])
    imm = out[1].immediate_response
    assert imm.status.code == 400
    err = json.loads(imm.body)["error"]
    assert "maximum context length is 32768 tokens" in err["message"]
    assert err["type"] == "BadRequestError" and err["code"] == 400
    assert counter(proc, "rejections", "too_long") >= 1
    assert all(p.inflight == 0 for p in proc.pools)


@pytest.mark.parametrize(
    ("body", "words"),
    [(b"{not json", "not valid JSON"), (b"[1, 2]", "JSON object"), (b'{"messages": 3}', "")],
)
def test_malformed_bodies_get_an_openai_400(gw: GatewayThread, body: bytes, words: str) -> None:
    proc = ExtProcessor(gw.gateway)
    out = run(gw, proc, [req_headers(), req_body(body)])
    imm = out[1].immediate_response
    assert imm.status.code == 400
    assert words in json.loads(imm.body)["error"]["message"]


def test_paths_it_does_not_route_are_left_alone(gw: GatewayThread) -> None:
    proc = ExtProcessor(gw.gateway)
    get = pb.ProcessingRequest(
        request_headers=headers((":method", b"GET"), (":path", b"/v1/models"), eos=True)
    )
    out = run(gw, proc, [get])
    assert out[0].mode_override.request_body_mode == m.NONE
    out = run(gw, proc, [req_headers(b"/v1/embeddings"), req_body({"input": "x"})])
    assert out[0].mode_override.request_body_mode == m.NONE


def test_client_sent_routing_headers_are_removed(gw: GatewayThread) -> None:
    proc = ExtProcessor(gw.gateway)
    out = run(gw, proc, [req_headers(b"/v1/chat/completions", (POOL_HEADER, b"short"))])
    assert list(out[0].request_headers.response.header_mutation.remove_headers) == [POOL_HEADER]


def test_a_stream_cut_short_is_counted_and_releases_its_slot(gw: GatewayThread) -> None:
    proc = ExtProcessor(gw.gateway)
    before = counter(proc, "requests", "short", "client_closed")
    run(
        gw,
        proc,
        [
            req_headers(),
            req_body(chat("hi", max_tokens=100, stream=True)),
            resp_headers(200, b"text/event-stream"),
            resp_body(b'data: {"choices":[]}\n\n', False),
        ],
    )
    assert counter(proc, "requests", "short", "client_closed") == before + 1
    assert all(p.inflight == 0 for p in proc.pools)


def test_endpoint_picker_names_a_backend_in_header_and_metadata(gw: GatewayThread) -> None:
    proc = ExtProcessor(gw.gateway, endpoint_picker=True)
    short = proc.pools[0]
    # Load on the first backend: the picker takes the second.
    gw.run(lambda: setattr(short.backends[0], "waiting", 5.0))
    try:
        out = run(gw, proc, [req_headers(), req_body(chat("hi", max_tokens=4))])
        # ... and while that request is open, its backend counts one more in flight.
        common = out[1].request_body.response
        dest = set_headers(common)[DESTINATION_HEADER].decode()
        assert dest.split(",")[0] == "127.0.0.1:10"
        assert dest == "127.0.0.1:10,127.0.0.1:9"
        meta = out[1].dynamic_metadata.fields[LB_NAMESPACE].struct_value.fields
        assert meta[DESTINATION_HEADER].string_value == dest
        assert all(b.inflight == 0 for b in short.backends)  # released at the stream's end
    finally:
        gw.run(lambda: setattr(short.backends[0], "waiting", 0.0))


def test_cli_check_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text(json.dumps(CONFIG))
    assert main(["extproc", "--check", "--config", str(cfg)]) == 0
    assert "config ok" in capsys.readouterr().out
    assert main(["extproc", "--config", str(cfg), "--grpc-port", "70000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--grpc-port" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: 3\n")
    assert main(["extproc", "--check", "--config", str(bad)]) == 2
