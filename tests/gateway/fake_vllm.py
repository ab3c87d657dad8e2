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
from typing import Any

import httptools

from dualpool.contract import over_length_message


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


class Conn(asyncio.Protocol):
    def __init__(self, st: State) -> None:
        self.st = st
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.queue: asyncio.Queue[tuple[bytes, bytes, bytes, bool]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.task = asyncio.get_running_loop().create_task(self.worker())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport:
                self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.queue.put_nowait(
            (
                self.parser.get_method(),
                self.url,
                b"".join(self.body),
                self.parser.should_keep_alive(),
            )
        )

    def write(self, status: int, body: bytes, ctype: bytes = b"application/json") -> None:
        assert self.transport is not None
        reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}.get(status, b"Error")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
            b"server: fake-vllm\r\n\r\n%s" % (status, reason, ctype, len(body), body)
        )

    async def worker(self) -> None:
        while True:
            method, url, body, keep = await self.queue.get()
            await self.handle(method, url.split(b"?")[0], body)
            if not keep and self.transport is not None:
                self.transport.close()
                return

    async def handle(self, method: bytes, path: bytes, raw: bytes) -> None:
        st = self.st
        if path == b"/health":
            self.write(200, b"")
        elif path == b"/v1/models":
            self.write(
                200,
                json.dumps(
                    {
                        "object": "list",
                        "data": [
                            {
                                "id": st.model,
                                "object": "model",
                                "owned_by": "vllm",
                                "max_model_len": st.max_model_len,
                            }
                        ],
                    }
                ).encode(),
            )
        elif path == b"/metrics":
            text = (
                "# TYPE vllm:num_requests_waiting gauge\n"
                f'vllm:num_requests_waiting{{model_name="{st.model}"}} {st.waiting}\n'
                f'vllm:num_requests_running{{model_name="{st.model}"}} {st.inflight}\n'
                f'vllm:kv_cache_usage_perc{{model_name="{st.model}"}} {st.kv}\n'
            )
            self.write(200, text.encode(), b"text/plain")
        elif path == b"/stats":
            self.write(
                200, json.dumps({"requests": st.requests, "completions": st.completions}).encode()
            )
        elif path == b"/control":
            ctl = json.loads(raw)
            for k, v in ctl.items():
                setattr(st, k, v)
            self.write(200, b"{}")
        elif method == b"POST" and path in (b"/v1/chat/completions", b"/v1/completions"):
            st.requests += 1
            st.inflight += 1
            try:
                await self.complete(path == b"/v1/chat/completions", json.loads(raw))
            finally:
                st.inflight -= 1
        else:
            self.write(404, b'{"error": {"message": "not found", "code": 404}}')

    async def complete(self, chat: bool, body: dict[str, Any]) -> None:
        st = self.st
        if st.delay:
            await asyncio.sleep(st.delay)
        if st.fail_count > 0:
            st.fail_count -= 1
            self.write(st.fail_status or 500, b'{"error": {"message": "injected", "code": 500}}')
            return
        p = prompt_tokens(body, st.bpt)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if max_tokens is not None and p + max_tokens > st.max_model_len:
            msg = over_length_message(st.max_model_len, prompt_tokens=p, max_tokens=max_tokens)
            err = {"error": {"message": msg, "type": "BadRequestError", "param": None, "code": 400}}
            self.write(400, json.dumps(err).encode())
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
            self.write(200, json.dumps(out).encode())
            return
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
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
                self.transport.abort()
                return
            data = b"data: " + json.dumps(ev).encode() + b"\n\n"
            self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
            if st.token_delay:
                await asyncio.sleep(st.token_delay)
        done = b"data: [DONE]\n\n"
        self.transport.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))


async def main(args: argparse.Namespace) -> None:
    st = State(args)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Conn(st), args.host, args.port, reuse_address=True)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
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
