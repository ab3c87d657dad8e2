"""A small fake vLLM OpenAI server for the gateway's end-to-end tests.

Run as a process: `python fake_vllm.py --port P --max-model-len N [--bytes-per-token 4]`.
It speaks the parts of vLLM's contract the gateway relies on:

- POST /v1/chat/completions and /v1/completions, streaming (SSE, chunked, usage
  chunk with `choices: []` only when `stream_options.include_usage`) and not;
  usage computed from the body: ceil(text bytes / bytes_per_token) + 3 per message + 2;
- vLLM's 400 over-length answer when prompt + max_tokens > max_model_len;
- GET /v1/models (with max_model_len), /health, /metrics (vllm:num_requests_waiting,
  vllm:kv_cache_usage_perc);
- test hooks: GET /stats (requests seen), POST /control (fail with a status,
  delay, fake load, die mid-stream).

It is the stand-in for the vLLM emulator (`dualpool emulate`): the fixture in
conftest.py starts it by command line, so the emulator can replace it there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections.abc import Awaitable
from typing import Any

from dualpool.contract import over_length_message
from dualpool.http import Exchange, HttpServer, Request, ServerLimits


class State:
    def __init__(self, args: argparse.Namespace) -> None:
        self.model = args.model
        self.max_model_len = args.max_model_len
        self.bpt = args.bytes_per_token
        self.output_tokens = args.output_tokens
        self.requests = 0
        self.completions = 0
        self.fail_status = 0
        self.fail_count = 0
        self.delay = 0.0
        self.token_delay = args.token_delay
        self.waiting = 0
        self.kv = 0.0
        self.die_after_chunks = -1
        self.inflight = 0


def prompt_tokens(body: dict[str, Any], bpt: float) -> int:
    if "messages" in body:
        n = 0
        text = 0
        for m in body["messages"]:
            n += 1
            c = m.get("content")
            if isinstance(c, str):
                text += len(c.encode())
            elif isinstance(c, list):
                for part in c:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        text += len(part["text"].encode())
        return math.ceil(text / bpt) + 3 * n + 2
    p = body.get("prompt", "")
    if isinstance(p, list) and p and isinstance(p[0], int):
        return len(p)
    if isinstance(p, list):
        p = "".join(x for x in p if isinstance(x, str))
    return max(1, math.ceil(len(str(p).encode()) / bpt))


class App:
    """The fake's endpoints, served by dualpool.http (one request at a time per connection)."""

    def __init__(self, st: State) -> None:
        self.st = st

    def error_body(self, status: int, message: str) -> bytes:
        return json.dumps({"error": {"message": message, "code": status}}).encode()

    def handle(self, req: Request, ex: Exchange) -> Awaitable[None] | None:
        st = self.st
        path = req.path
        if path == b"/health":
            ex.send(200, b"", content_type=None)
        elif path == b"/v1/models":
            card = {
                "id": st.model,
                "object": "model",
                "owned_by": "vllm",
                "max_model_len": st.max_model_len,
            }
            ex.send(200, json.dumps({"object": "list", "data": [card]}).encode())
        elif path == b"/metrics":
            text = (
                "# TYPE vllm:num_requests_waiting gauge\n"
                f'vllm:num_requests_waiting{{model_name="{st.model}"}} {st.waiting}\n'
                f'vllm:num_requests_running{{model_name="{st.model}"}} {st.inflight}\n'
                f'vllm:kv_cache_usage_perc{{model_name="{st.model}"}} {st.kv}\n'
            )
            ex.send(200, text.encode(), content_type=b"text/plain")
        elif path == b"/stats":
            stats = {"requests": st.requests, "completions": st.completions}
            ex.send(200, json.dumps(stats).encode())
        elif path == b"/control":
            for k, v in json.loads(req.body).items():
                setattr(st, k, v)
            ex.send(200, b"{}")
        elif req.method == b"POST" and path in (b"/v1/chat/completions", b"/v1/completions"):
            return self.generate(ex, path == b"/v1/chat/completions", json.loads(req.body))
        else:
            ex.send(404, b'{"error": {"message": "not found", "code": 404}}')
        return None

    async def generate(self, ex: Exchange, chat: bool, body: dict[str, Any]) -> None:
        st = self.st
        st.requests += 1
        st.inflight += 1
        try:
            await self.complete(ex, chat, body)
        finally:
            st.inflight -= 1

    async def complete(self, ex: Exchange, chat: bool, body: dict[str, Any]) -> None:
        st = self.st
        if st.delay:
            await asyncio.sleep(st.delay)
        if st.fail_count > 0:
            st.fail_count -= 1
            ex.send(st.fail_status or 500, b'{"error": {"message": "injected", "code": 500}}')
            return
        p = prompt_tokens(body, st.bpt)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if max_tokens is not None and p + max_tokens > st.max_model_len:
            msg = over_length_message(st.max_model_len, prompt_tokens=p, max_tokens=max_tokens)
            err = {"error": {"message": msg, "type": "BadRequestError", "param": None, "code": 400}}
            ex.send(400, json.dumps(err).encode())
            return
        limit = max_tokens if max_tokens is not None else st.max_model_len - p
        n = max(1, min(st.output_tokens, limit))
        st.completions += 1
        usage = {"prompt_tokens": p, "total_tokens": p + n, "completion_tokens": n}
        rid = "chatcmpl-fake" if chat else "cmpl-fake"
        obj = "chat.completion" if chat else "text_completion"
        model = body.get("model", st.model)
        if not body.get("stream"):
            text = " ".join(f"tok{i}" for i in range(n))
            choice: dict[str, Any] = (
                {"index": 0, "message": {"role": "assistant", "content": text}}
                if chat
                else {"index": 0, "text": text}
            )
            choice.update(logprobs=None, finish_reason="length" if n == max_tokens else "stop")
            out = {
                "id": rid,
                "object": obj,
                "created": 1,
                "model": model,
                "choices": [choice],
                "usage": usage,
            }
            ex.send(200, json.dumps(out).encode())
            return
        ex.start_stream(200, b"text/event-stream; charset=utf-8")
        obj += ".chunk" if chat else ""
        events: list[dict[str, Any]] = []
        for i in range(n):
            if chat:
                delta: dict[str, Any] = {"content": f"tok{i} "}
                if i == 0:
                    delta["role"] = "assistant"
                ch: dict[str, Any] = {"index": 0, "delta": delta}
            else:
                ch = {"index": 0, "text": f"tok{i} "}
            ch.update(logprobs=None, finish_reason=None if i < n - 1 else "length")
            events.append({"id": rid, "object": obj, "created": 1, "model": model, "choices": [ch]})
        so = body.get("stream_options") or {}
        if so.get("include_usage"):
            events.append(
                {
                    "id": rid,
                    "object": obj,
                    "created": 1,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
            )
        for k, ev in enumerate(events):
            if k == st.die_after_chunks:
                ex.abort()
                return
            ex.write(b"data: " + json.dumps(ev).encode() + b"\n\n")
            if st.token_delay:
                await asyncio.sleep(st.token_delay)
        ex.end(b"data: [DONE]\n\n")


async def main(args: argparse.Namespace) -> None:
    st = State(args)
    server = HttpServer(App(st), ServerLimits(idle_timeout=60.0), server_name=b"fake-vllm")
    port = await server.listen(args.host, args.port)
    print(f"ready {port}", flush=True)
    t0 = time.time()
    while args.lifetime <= 0 or time.time() - t0 < args.lifetime:
        await asyncio.sleep(0.5)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--bytes-per-token", type=float, default=4.0)
    ap.add_argument("--output-tokens", type=int, default=5)
    ap.add_argument("--token-delay", type=float, default=0.0)
    ap.add_argument("--model", default="fake-model")
    # Safety net: exit by itself after this many seconds (0: never).
    ap.add_argument("--lifetime", type=float, default=300.0)
    asyncio.run(main(ap.parse_args()))
