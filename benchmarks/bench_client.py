"""How fast `dualpool bench` drives load, and how exactly it times what it sees.

    python benchmarks/bench_client.py [--quick]

1. Throughput: one bench (this process, pinned to CPU 0) in a closed loop of
   256 users sends small streaming chat requests (16-token prompts, 2 output
   tokens) to the fixed fast backend (benchmarks/_backend.py, pinned to CPU 1)
   for a few seconds: completed requests per second.
2. Timing error: a backend built on the same _backend.py connection class
   answers each streamed request with known delays (first token 20 ms after
   the request arrived, the second 10 ms later) and records the clock
   (CLOCK_MONOTONIC, shared by processes on Linux) when it wrote each token.
   The bench's timing error is when it saw the first token minus when the
   backend wrote it (loopback delivery, scheduling, parsing), and its ITL
   minus the backend's true gap. Open loop, 200 req/s: loaded, not saturated.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit
from dualpool.bench import (
    BodyMaker,
    BodyOptions,
    Endpoint,
    PromptSynth,
    RunOptions,
    run_bench,
)
from dualpool.tokenizers import load_tokenizer
from dualpool.workload import Request

HERE = Path(__file__).resolve().parent
FIRST_S = 0.020
GAP_S = 0.010

# A backend with known delays, on _backend.py's connection class (same HTTP code).
DELAYED = r"""
import asyncio, json, sys, time
sys.path.insert(0, sys.argv[1])
import _backend

FIRST, GAP = float(sys.argv[2]), float(sys.argv[3])
written = {}  # prompt key -> [time the first token was written, time the second was]

def chunk(obj):
    data = b"data: " + json.dumps(obj).encode() + b"\n\n"
    return b"%x\r\n%b\r\n" % (len(data), data)

TOK = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
       "choices": [{"index": 0, "delta": {"content": " the"}, "finish_reason": None}]}
USAGE = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
         "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22}}
HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n")
TAIL = chunk(TOK) + chunk(USAGE) + b"%x\r\n%b\r\n0\r\n\r\n" % (14, b"data: [DONE]\n\n")

class Delayed(_backend.Conn):
    body = b""

    def on_message_begin(self):
        super().on_message_begin()
        self.body = b""

    def on_body(self, body):
        self.body += body

    def on_message_complete(self):
        t = self.transport
        if self.parser.get_method() != b"POST":
            t.write(_backend._response(b"200 OK", json.dumps(written).encode()))
            return
        key = json.loads(self.body)["messages"][0]["content"]
        loop = asyncio.get_running_loop()
        def first():
            t.write(HEAD + chunk(TOK))
            times = written[key] = [time.perf_counter()]
            def second():
                t.write(TAIL)
                times.append(time.perf_counter())
            loop.call_later(GAP, second)
        loop.call_later(FIRST, first)

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Delayed({}, 0.0), "127.0.0.1", 0, backlog=4096)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.sleep(600)

import uvloop
uvloop.run(main())
"""


def _start(cmd: list[str], cpu: int) -> tuple[subprocess.Popen[str], int]:
    def pin() -> None:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {cpu})

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, preexec_fn=pin)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, int(line.split()[1])


def _requests(n: int, prompt: int, output: int, rate: float | None) -> Iterable[Request]:
    if rate is None:  # closed loop: arrival times do not matter
        return itertools.repeat(Request(0.0, prompt, output, None, None, "prose"), n)
    t = np.cumsum(np.random.default_rng(0).exponential(1 / rate, n))
    return [Request(float(a), prompt, output, None, None, "prose") for a in t]


async def _throughput(port: int, seconds: float) -> dict[str, float]:
    maker = BodyMaker(PromptSynth(load_tokenizer("llama3")), BodyOptions(model="bench-model"))
    opts = RunOptions(mode="closed", users=256, duration_s=seconds)
    res = await run_bench(
        [("", Endpoint("127.0.0.1", port))], _requests(10**6, 16, 2, None), maker, opts
    )
    rs = res.results[""]
    ok = sum(r.success for r in rs)
    return {"requests": len(rs), "ok": ok, "seconds": res.wall_s, "req_per_s": ok / res.wall_s}


async def _timing(port: int, n: int) -> dict[str, float]:
    maker = BodyMaker(PromptSynth(load_tokenizer("llama3")), BodyOptions(model="m"))
    reqs = _requests(n, 16, 2, 200.0)
    keys = [
        json.loads(maker.make(i, r.prompt_tokens, r.output_tokens, None, r.category, None).body)[
            "messages"
        ][0]["content"]
        for i, r in enumerate(reqs)
    ]
    res = await run_bench([("", Endpoint("127.0.0.1", port))], reqs, maker, RunOptions())
    from dualpool.bench._client import get

    _, body = await get(Endpoint("127.0.0.1", port), "/stats")
    written = json.loads(body)
    ttft_err: list[float] = []
    itl_err: list[float] = []
    for r in res.results[""]:
        w = written.get(keys[r.index])
        if not r.success or w is None or len(w) < 2 or len(r.itl_s) != 1:
            continue
        first = res.t0 + r.start_s + r.ttft_s  # when the bench saw the first token
        ttft_err.append(first - w[0])
        itl_err.append(r.itl_s[0] - (w[1] - w[0]))
    out: dict[str, float] = {"timed_requests": len(ttft_err)}
    for q in (50, 90, 99):
        out[f"ttft_error_p{q}_ms"] = float(np.percentile(ttft_err, q)) * 1000
        out[f"itl_error_p{q}_ms"] = float(np.percentile(itl_err, q)) * 1000
        out[f"itl_abs_error_p{q}_ms"] = float(np.percentile(np.abs(itl_err), q)) * 1000
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    seconds = 4.0 if args.quick else 12.0
    n_timed = 600 if args.quick else 2000
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    import uvloop

    fast, fport = _start(
        [sys.executable, str(HERE / "_backend.py"), "--stream-gap", "0", "--lifetime", "300"], 1
    )
    slow, sport = _start([sys.executable, "-c", DELAYED, str(HERE), str(FIRST_S), str(GAP_S)], 1)
    try:
        time.sleep(0.3)
        tp = uvloop.run(_throughput(fport, seconds))
        tm = uvloop.run(_timing(sport, n_timed))
    finally:
        for p in (fast, slow):
            p.terminate()
            p.wait(10)
    print(f"throughput: {tp['req_per_s']:,.0f} req/s ({tp['ok']:,} in {tp['seconds']:.1f} s)")
    print(
        f"timing error p50: first token seen {tm['ttft_error_p50_ms']:.3f} ms after the backend"
        f" wrote it; ITL error {tm['itl_error_p50_ms']:.3f} ms (|ITL error|"
        f" {tm['itl_abs_error_p50_ms']:.3f} ms); load average {os.getloadavg()[0]:.1f}"
    )
    emit(
        {
            "benchmark": "bench_client",
            "quick": args.quick,
            "throughput_req_per_s": round(tp["req_per_s"], 1),
            "throughput_requests": tp["ok"],
            "load_average": round(os.getloadavg()[0], 2),
            **{k: round(v, 4) for k, v in tm.items()},
        }
    )


if __name__ == "__main__":
    main()
