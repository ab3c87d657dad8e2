"""A minimal fixed backend for gateway benchmarks: as fast as Python serves HTTP.

    python benchmarks/_backend.py --port P [--model M] [--max-model-len N]

Answers every POST with one fixed chat completion (with usage), or, for a body
with `"stream": true`, a short fixed SSE stream; GET /v1/models, /health,
/metrics answer what a router's start-up checks want. No JSON parsing on the
request path (the stream flag is a substring test), so the backend is not what
a benchmark measures. Not the emulator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket

import httptools

MODEL = "bench-model"


def _response(status: bytes, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: " + ctype + b"\r\n"
        b"content-length: %d\r\n\r\n" % len(body) + body
    )


def build(model: str, max_model_len: int) -> dict[bytes, bytes]:
    completion = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 75, "total_tokens": 85, "completion_tokens": 10},
    }
    models = {
        "object": "list",
        "data": [
            {
                "id": model,
                "object": "model",
                "created": 1700000000,
                "owned_by": "vllm",
                "max_model_len": max_model_len,
            }
        ],
    }
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
    }
    usage = dict(chunk, choices=[], usage=completion["usage"])
    first = b"data: " + json.dumps(chunk).encode() + b"\n\n"
    rest = b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n"
    stream_head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"%x\r\n%b\r\n" % (len(first), first)
    )
    stream_tail = b"%x\r\n%b\r\n0\r\n\r\n" % (len(rest), rest)
    metrics = (
        b'vllm:num_requests_waiting{model_name="m"} 0\nvllm:kv_cache_usage_perc{model_name="m"} 0\n'
    )
    return {
        b"completion": _response(b"200 OK", json.dumps(completion).encode()),
        b"/v1/models": _response(b"200 OK", json.dumps(models).encode()),
        b"/health": _response(b"200 OK", b""),
        b"/metrics": _response(b"200 OK", metrics, b"text/plain"),
        b"404": _response(b"404 Not Found", b"{}"),
        b"stream_head": stream_head,
        b"stream_tail": stream_tail,
    }


class Conn(asyncio.Protocol):
    def __init__(self, answers: dict[bytes, bytes], stream_gap: float) -> None:
        self.answers = answers
        self.gap = stream_gap
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.stream = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport:
                self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.stream = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        if b'"stream": true' in body or b'"stream":true' in body:
            self.stream = True

    def on_message_complete(self) -> None:
        t = self.transport
        assert t is not None
        if self.parser.get_method() == b"POST":
            if self.stream:
                t.write(self.answers[b"stream_head"])
                tail = self.answers[b"stream_tail"]
                asyncio.get_running_loop().call_later(self.gap, t.write, tail)
            else:
                t.write(self.answers[b"completion"])
        else:
            t.write(self.answers.get(self.url.split(b"?")[0], self.answers[b"404"]))


async def main(args: argparse.Namespace) -> None:
    answers = build(args.model, args.max_model_len)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Conn(answers, args.stream_gap), "127.0.0.1", args.port, backlog=4096
    )
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.sleep(args.lifetime)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--max-model-len", type=int, default=32768)
    # Seconds between the first SSE chunk and the rest of a stream.
    ap.add_argument("--stream-gap", type=float, default=0.002)
    ap.add_argument("--lifetime", type=float, default=float(os.environ.get("BENCH_LIFETIME", 900)))
    a = ap.parse_args()
    try:
        import uvloop

        uvloop.run(main(a))
    except ImportError:
        asyncio.run(main(a))
