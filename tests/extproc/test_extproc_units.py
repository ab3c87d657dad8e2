"""The ext_proc state machine phase by phase, without Envoy: the real `Process` method
driven with the protobuf messages Envoy sends under deploy/envoy/envoy.yaml (the route,
strip and observer filters' streams), over a real gateway's router and pools."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("grpc", reason="the extproc extra (grpcio) is not installed")
pytest.importorskip(
    "envoy.service.ext_proc.v3.external_processor_pb2",
    reason="the extproc extra (xds-protos) is not installed",
)

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from dualpool.cli.main import main
from dualpool.extproc import (
    DESTINATION_HEADER,
    LB_NAMESPACE,
    META_NAMESPACE,
    POOL_HEADER,
    STRIP_HEADER,
    ExtProcessor,
)
from dualpool.extproc import _messages as m
from dualpool.extproc._server import grpc_method
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


PIPELINED = pb.ProtocolConfiguration(
    request_body_mode=m.STREAMED, send_body_without_waiting_for_header_response=True
)


def req_headers(
    path: bytes = b"/v1/chat/completions", *extra: tuple[str, bytes], pipelined: bool = True
) -> Any:
    return pb.ProcessingRequest(
        request_headers=headers((":method", b"POST"), (":path", path), *extra),
        protocol_config=PIPELINED if pipelined else None,
    )


def raw(obj: Any) -> bytes:
    return obj if isinstance(obj, bytes) else json.dumps(obj).encode()


def body_chunks(obj: Any) -> list[Any]:
    """A body as Envoy streams it here: the bytes, then an empty end-of-stream chunk."""
    return [
        pb.ProcessingRequest(request_body=pb.HttpBody(body=raw(obj))),
        pb.ProcessingRequest(request_body=pb.HttpBody(end_of_stream=True)),
    ]


def request(
    obj: Any, *extra: tuple[str, bytes], path: bytes = b"/v1/chat/completions"
) -> list[Any]:
    """A request as the route filter streams it: headers (with its content-length), then
    the body chunks."""
    length = ("content-length", str(len(raw(obj))).encode())
    return [req_headers(path, length, *extra), *body_chunks(obj)]


def req_body(obj: Any) -> Any:
    """The whole body in one message (request_body_mode BUFFERED)."""
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=raw(obj), end_of_stream=True))


def observed(rid: str, *msgs: Any) -> list[Any]:
    """The observer filter's messages: observability mode, the request's id as metadata."""
    md = base_pb2.Metadata()
    md.filter_metadata[META_NAMESPACE].fields["id"].string_value = rid
    out = []
    for msg in msgs:
        msg = pb.ProcessingRequest.FromString(msg.SerializeToString())
        msg.observability_mode = True
        msg.metadata_context.CopyFrom(md)
        out.append(msg)
    return out


def resp_headers(status: int, ctype: bytes) -> Any:
    return pb.ProcessingRequest(
        response_headers=headers((":status", str(status).encode()), ("content-type", ctype))
    )


def resp_body(data: bytes, eos: bool) -> Any:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=data, end_of_stream=eos))


def run(gw: GatewayThread, proc: ExtProcessor, msgs: list[Any]) -> list[Any]:
    """One gRPC stream through the real grpcio method (serialized messages both
    ways, as on the wire), the answers parsed; the observer's work done."""

    async def it() -> AsyncIterator[bytes]:
        for msg in msgs:
            yield msg.SerializeToString()

    async def drive() -> list[Any]:
        out = [parsed(r) async for r in grpc_method(proc)(it(), None)]
        proc.flush()
        return out

    out: list[Any] = gw.call(drive())
    return out


def parsed(data: bytes) -> Any:
    return pb.ProcessingResponse.FromString(data)


def request_id(answer: Any) -> str:
    value: str = answer.dynamic_metadata.fields[META_NAMESPACE].struct_value.fields["id"]
    return value.string_value  # type: ignore[attr-defined]


def set_headers(common: Any) -> dict[str, bytes]:
    return {h.header.key: h.header.raw_value for h in common.header_mutation.set_headers}


def counter(proc: ExtProcessor, name: str, *labels: str) -> float:
    return float(getattr(proc.metrics, name).value(*labels))


def chat(content: str, **kw: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **kw}


def fed(proc: ExtProcessor) -> float:
    return counter(proc, "feedback", "overhead_only") + counter(proc, "feedback", "accepted")


def test_one_round_trip_routes_a_request_and_the_observer_feeds_its_usage_back(
    gw: GatewayThread,
) -> None:
    proc = ExtProcessor(gw.gateway)
    usage = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}
    answer = json.dumps({"choices": [{"message": {"content": "hi"}}], "usage": usage}).encode()
    before = fed(proc)
    # The headers are held: nothing is answered until the body is in, then all at once.
    out = run(gw, proc, request(chat("hello there", max_tokens=8)))
    assert [a.WhichOneof("response") for a in out] == [
        "request_headers",
        "request_body",
        "request_body",
    ]
    common = out[0].request_headers.response
    assert set_headers(common) == {POOL_HEADER: b"short"}
    assert common.clear_route_cache
    assert out[1] == parsed(m.CONTINUE_REQUEST_BODY) and out[2] == parsed(m.CONTINUE_REQUEST_BODY)
    assert proc.pools[0].inflight == 1  # until the observer sees the answer's end
    rid = request_id(out[0])
    # Envoy does not wait for the observer: it is never answered.
    got = run(
        gw,
        proc,
        observed(
            rid,
            req_headers(),
            resp_headers(200, b"application/json"),
            resp_body(answer, False),
            resp_body(b"", True),
        ),
    )
    assert got == []
    assert fed(proc) == before + 1
    assert counter(proc, "requests", "short", "ok") >= 1
    assert all(p.inflight == 0 for p in proc.pools)


def test_a_stream_asks_for_usage_and_the_strip_filter_removes_it(gw: GatewayThread) -> None:
    proc = ExtProcessor(gw.gateway)
    chunk = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    usage_event = (
        b'data: {"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":1,'
        b'"total_tokens":12}}\n\n'
    )
    done = b"data: [DONE]\n\n"
    before = fed(proc)
    body = chat("hi", max_tokens=1, stream=True, stream_options={"x": 1})
    out = run(gw, proc, request(body))
    assert set_headers(out[0].request_headers.response) == {
        POOL_HEADER: b"short",
        STRIP_HEADER: b"1",
    }
    # The new body replaces the first chunk; the rest are cleared.
    sent = json.loads(out[1].request_body.response.body_mutation.body)
    assert sent["stream_options"] == {"x": 1, "include_usage": True}
    assert out[2] == parsed(m.CLEAR_REQUEST_BODY)
    # The strip filter's stream (only on the route the strip header selects).
    stripped = run(
        gw,
        proc,
        [resp_body(chunk, False), resp_body(usage_event + done, False), resp_body(b"", True)],
    )
    assert stripped[0] == parsed(m.CONTINUE_RESPONSE_BODY)  # passes as it came
    assert stripped[1].response_body.response.body_mutation.body == done  # usage event gone
    # The observer saw the raw answer, usage included.
    run(
        gw,
        proc,
        observed(
            request_id(out[0]),
            req_headers(),
            resp_headers(200, b"text/event-stream"),
            resp_body(chunk + usage_event + done, False),
            resp_body(b"", True),
        ),
    )
    assert fed(proc) == before + 1
    assert all(p.inflight == 0 for p in proc.pools)


def test_a_client_that_asked_for_usage_gets_its_body_untouched(gw: GatewayThread) -> None:
    proc = ExtProcessor(gw.gateway)
    body = chat("hi", max_tokens=1, stream=True, stream_options={"include_usage": True})
    out = run(gw, proc, request(body))
    assert STRIP_HEADER not in set_headers(out[0].request_headers.response)
    assert out[1] == parsed(m.CONTINUE_REQUEST_BODY)
    run(gw, proc, observed(request_id(out[0]), req_headers()))


def test_over_length_is_answered_by_the_processor_with_vllms_error(gw: GatewayThread) -> None:
    proc = ExtProcessor(gw.gateway)
    out = run(gw, proc, request(chat("word " * 60_000, max_tokens=33_000)))
    assert len(out) == 1
    imm = out[0].immediate_response
    assert imm.status.code == 400
    err = json.loads(imm.body)["error"]
    assert "maximum context length is 32768 tokens" in err["message"]
    assert err["type"] == "BadRequestError" and err["code"] == 400
    assert counter(proc, "rejections", "too_long") >= 1
    assert all(p.inflight == 0 for p in proc.pools)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"messages": 3}', ""),
        # The gateway's bounded parse: no RecursionError, no 5,000-digit integer.
        (b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nests deeper"),
        (b'{"max_tokens": ' + b"9" * 5000 + b"}", "more than 64 digits"),
    ],
)
def test_malformed_bodies_get_an_openai_400(gw: GatewayThread, body: bytes, words: str) -> None:
    proc = ExtProcessor(gw.gateway)
    out = run(gw, proc, request(body))
    imm = out[0].immediate_response
    assert imm.status.code == 400
    assert words in json.loads(imm.body)["error"]["message"]


def test_a_body_over_the_limit_gets_413_before_it_is_all_in(gw: GatewayThread) -> None:
    proc = ExtProcessor(gw.gateway)
    proc.max_body = 64
    out = run(gw, proc, request(chat("x" * 100)))
    assert out[0].immediate_response.status.code == 413
    assert all(p.inflight == 0 for p in proc.pools)


def test_a_body_still_uploading_asks_envoy_for_more_time(gw: GatewayThread) -> None:
    proc = ExtProcessor(gw.gateway)
    body = raw(chat("hello", max_tokens=4))
    half = len(body) // 2
    out = run(
        gw,
        proc,
        [
            req_headers(b"/v1/chat/completions", ("content-length", str(len(body)).encode())),
            pb.ProcessingRequest(request_body=pb.HttpBody(body=body[:half])),
            pb.ProcessingRequest(request_body=pb.HttpBody(body=body[half:])),
            pb.ProcessingRequest(request_body=pb.HttpBody(end_of_stream=True)),
        ],
    )
    assert out[0].override_message_timeout.seconds > 0  # once, at the first short chunk
    assert set_headers(out[1].request_headers.response) == {POOL_HEADER: b"short"}
    assert len(out) == 5  # + one answer per chunk
    gw.run(lambda: proc._sweep(proc._unclaimed, float("inf")))


def test_buffered_mode_answers_headers_at_once_and_routes_in_the_bodys_answer(
    gw: GatewayThread,
) -> None:
    proc = ExtProcessor(gw.gateway)
    out = run(gw, proc, [req_headers(pipelined=False), req_body(chat("hi", max_tokens=4))])
    assert out[0] == parsed(m.CONTINUE_REQUEST_HEADERS)
    common = out[1].request_body.response
    assert set_headers(common) == {POOL_HEADER: b"short"}
    assert common.clear_route_cache
    run(gw, proc, observed(request_id(out[1]), req_headers(), resp_headers(503, b"text/plain")))
    assert all(p.inflight == 0 for p in proc.pools)


def test_paths_it_does_not_route_are_left_alone(gw: GatewayThread) -> None:
    proc = ExtProcessor(gw.gateway)
    get = pb.ProcessingRequest(
        request_headers=headers((":method", b"GET"), (":path", b"/v1/models"), eos=True),
        protocol_config=PIPELINED,
    )
    out = run(gw, proc, [get])
    assert out[0].WhichOneof("response") == "request_headers"
    assert not out[0].request_headers.response.clear_route_cache  # the default route
    out = run(gw, proc, request({"input": "x"}, path=b"/v1/embeddings"))
    assert len(out) == 3 and all(a.WhichOneof("response") for a in out)
    assert out[1] == parsed(m.CONTINUE_REQUEST_BODY)


def test_client_sent_routing_headers_are_removed(gw: GatewayThread) -> None:
    proc = ExtProcessor(gw.gateway)
    out = run(
        gw,
        proc,
        request(chat("hi"), (POOL_HEADER, b"long")),
    )
    mutation = out[0].request_headers.response.header_mutation
    assert list(mutation.remove_headers) == [POOL_HEADER]
    assert set_headers(out[0].request_headers.response) == {POOL_HEADER: b"short"}
    run(gw, proc, observed(request_id(out[0]), req_headers(), resp_headers(200, b"x/y")))


def test_a_stream_cut_short_is_counted_and_releases_its_slot(gw: GatewayThread) -> None:
    proc = ExtProcessor(gw.gateway)
    before = counter(proc, "requests", "short", "client_closed")
    out = run(gw, proc, request(chat("hi", max_tokens=100, stream=True)))
    run(
        gw,
        proc,
        observed(
            request_id(out[0]),
            req_headers(),
            resp_headers(200, b"text/event-stream"),
            resp_body(b'data: {"choices":[]}\n\n', False),
        ),
    )
    assert counter(proc, "requests", "short", "client_closed") == before + 1
    assert all(p.inflight == 0 for p in proc.pools)


def test_a_request_no_observer_claims_is_released_later(gw: GatewayThread) -> None:
    proc = ExtProcessor(gw.gateway)
    run(gw, proc, request(chat("hi", max_tokens=4)))
    assert proc.pools[0].inflight == 1
    gw.run(lambda: proc._sweep(proc._unclaimed, float("inf")))
    assert proc.pools[0].inflight == 0 and not proc._unclaimed


def test_endpoint_picker_names_a_backend_in_header_and_metadata(gw: GatewayThread) -> None:
    proc = ExtProcessor(gw.gateway, endpoint_picker=True)
    short = proc.pools[0]
    # Load on the first backend: the picker takes the second.
    gw.run(lambda: setattr(short.backends[0], "waiting", 5.0))
    try:
        out = run(gw, proc, request(chat("hi", max_tokens=4)))
        common = out[0].request_headers.response
        dest = set_headers(common)[DESTINATION_HEADER].decode()
        assert dest.split(",")[0] == "127.0.0.1:10"
        assert dest == "127.0.0.1:10,127.0.0.1:9"
        meta = out[0].dynamic_metadata.fields[LB_NAMESPACE].struct_value.fields
        assert meta[DESTINATION_HEADER].string_value == dest
        # ... and while that request is open, its backend counts one more in flight.
        assert short.backends[1].inflight == 1
        run(gw, proc, observed(request_id(out[0]), req_headers()))  # gone before an answer
        assert all(b.inflight == 0 for b in short.backends)  # released at its end
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


MODELS = {
    "models": {
        "llama": {
            "aliases": ["l"],
            "pools": [
                {"name": "llama-short", "endpoints": ["http://127.0.0.1:9"], "max_model_len": 4096},
                {
                    "name": "llama-long",
                    "endpoints": ["http://127.0.0.1:10"],
                    "max_model_len": 32768,
                },
            ],
        },
        "qwen": {
            "pools": [
                {"name": "qwen-short", "endpoints": ["http://127.0.0.1:11"], "max_model_len": 8192},
                {"name": "qwen-long", "endpoints": ["http://127.0.0.1:12"], "max_model_len": 65536},
            ],
        },
    },
    "health": {"interval": 3600, "metrics_interval": 0},
    "log": {"level": "warning", "access": "debug"},
}


def test_several_models_each_route_over_their_own_pools() -> None:
    """`models:` in the fleet file: the request's `model` picks the router and pools,
    as in the gateway; an unknown model is vLLM's 404 from Envoy, no backend called."""
    with GatewayThread(MODELS) as g:
        proc = ExtProcessor(g.gateway)

        def pool_of(model: str | None, text: str, max_tokens: int) -> Any:
            body: dict[str, Any] = {"messages": [{"role": "user", "content": text}]}
            body["max_tokens"] = max_tokens
            if model is not None:
                body["model"] = model
            out = run(g, proc, request(body))
            if out[0].HasField("immediate_response"):
                return out[0].immediate_response
            run(g, proc, observed(request_id(out[0]), req_headers()))
            return set_headers(out[0].request_headers.response)[POOL_HEADER]

        assert pool_of("qwen", "hi", 8) == b"qwen-short"
        assert pool_of("qwen", "word " * 12_000, 8) == b"qwen-long"
        assert pool_of("l", "hi", 8) == b"llama-short"
        assert pool_of(None, "hi", 8) == b"llama-short"  # no model: the first
        # 40,000 tokens: over llama's largest pool, within qwen's.
        assert pool_of("qwen", "hi", 40_000) == b"qwen-long"
        too_long = pool_of("llama", "hi", 40_000)
        assert too_long.status.code == 400
        unknown = pool_of("gpt-5", "hi", 8)
        assert unknown.status.code == 404
        assert json.loads(unknown.body)["error"]["message"] == "The model `gpt-5` does not exist."
        assert all(p.inflight == 0 for p in proc.pools)


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=40),
        st.dictionaries(st.text(max_size=40), st.text(max_size=300), max_size=3),
        min_size=1,
        max_size=3,
    )
)
def test_route_answer_metadata_encoded_by_hand_is_what_protobuf_reads(
    metadata: dict[str, dict[str, str]],
) -> None:
    prefix = m.route_headers(((POOL_HEADER, b"short"),), (DESTINATION_HEADER,))
    resp = parsed(m.route_response(prefix, metadata))
    assert resp.request_headers.response.clear_route_cache
    assert set_headers(resp.request_headers.response) == {POOL_HEADER: b"short"}
    got = {
        ns: {k: v.string_value for k, v in value.struct_value.fields.items()}
        for ns, value in resp.dynamic_metadata.fields.items()
    }
    assert got == metadata


_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-:", min_size=1, max_size=30)
_VALUE = st.binary(max_size=300).map(lambda b: bytes(c for c in b if 0x20 <= c < 0x7F or c >= 0x80))


@given(
    st.lists(
        st.tuples(
            st.sampled_from([":path", ":method", "content-length", POOL_HEADER]) | _TOKEN, _VALUE
        ),
        max_size=12,
        unique_by=lambda kv: kv[0],
    ),
    st.booleans(),
)
def test_headers_found_in_the_serialized_message_are_the_decoded_ones(
    kv: list[tuple[str, bytes]], pipelined: bool
) -> None:
    wanted = frozenset((":path", ":method", "content-length", POOL_HEADER, STRIP_HEADER))
    req = pb.ProcessingRequest(
        request_headers=headers(*kv), protocol_config=PIPELINED if pipelined else None
    )
    found = m.find_headers(req.SerializeToString(), wanted)
    if found is None:
        # An empty value is not serialized: such a message is decoded instead.
        assert any(not v for k, v in kv if k in wanted)
    else:
        assert found == m.read_headers(req.request_headers, wanted)
