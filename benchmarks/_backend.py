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

from dualpool.http import Exchange, HttpServer, Request, ServerLimits

MODEL = "bench-model"


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
    metrics = (
        b'vllm:num_requests_waiting{model_name="m"} 0\nvllm:kv_cache_usage_perc{model_name="m"} 0\n'
    )
    return {
        b"completion": json.dumps(completion).encode(),
        b"/v1/models": json.dumps(models).encode(),
        b"/health": b"",
        b"/metrics": metrics,
        b"stream_first": first,
        b"stream_rest": rest,
    }


class App:
    """Fixed answers through dualpool.http (the server the gateway and emulator use)."""

    def __init__(self, answers: dict[bytes, bytes], stream_gap: float, delay: float = 0.0) -> None:
        self.answers = answers
        self.gap = stream_gap
        self.delay = delay
        self.loop = asyncio.get_running_loop()

    def error_body(self, status: int, message: str) -> bytes:
        return b"{}"

    def handle(self, req: Request, ex: Exchange) -> None:
        a = self.answers
        if req.method == b"POST":
            body = req.body
            if b'"stream": true' in body or b'"stream":true' in body:
                ex.start_stream(200, b"text/event-stream")
                ex.write(a[b"stream_first"])
                self.loop.call_later(self.gap, ex.end, a[b"stream_rest"])
            elif self.delay > 0:
                self.loop.call_later(self.delay, ex.send, 200, a[b"completion"])
            else:
                ex.send(200, a[b"completion"])
        elif req.path == b"/metrics":
            ex.send(200, a[b"/metrics"], content_type=b"text/plain")
        elif req.path in a:
            ex.send(200, a[req.path])
        else:
            ex.send(404, b"{}")


async def main(args: argparse.Namespace) -> None:
    answers = build(args.model, args.max_model_len)
    app = App(answers, args.stream_gap, args.delay)
    server = HttpServer(app, ServerLimits(idle_timeout=60.0))
    port = await server.listen("127.0.0.1", args.port, backlog=4096)
    print(f"ready {port}", flush=True)
    await asyncio.sleep(args.lifetime)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--max-model-len", type=int, default=32768)
    # Seconds between the first SSE chunk and the rest of a stream.
    ap.add_argument("--stream-gap", type=float, default=0.002)
    # Seconds before a non-streamed answer (0: at once): a backend that takes time.
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--lifetime", type=float, default=float(os.environ.get("BENCH_LIFETIME", 900)))
    a = ap.parse_args()
    try:
        import uvloop

        uvloop.run(main(a))
    except ImportError:
        asyncio.run(main(a))
