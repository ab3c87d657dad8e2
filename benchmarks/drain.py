"""Drain: SIGTERM to the gateway with requests in flight; each must complete or end
with a clean error.

    PYTHONPATH=src .venv/bin/python benchmarks/drain.py [--quick]

Two emulators (short and long pool) slowed so a request takes ~2-4 s. Phase
"deadline_long": timeouts.drain 15 s, longer than the work: every request completes.
Phase "deadline_short": timeouts.drain 0.5 s, shorter than the work: at the deadline,
streams end with an SSE error event and the chunked end, the rest get a 503 JSON
error. `lost` (a reset, an EOF mid-answer, a stream without [DONE] or error event,
an answer without its chunked end) must be 0 in both; the gateway exits 0.

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit
from _fleet import LONG_LEN, MODEL, SHORT_LEN, Backend, Fleet, Tally, judge, read_answer


def slow_request(rng: random.Random, i: int) -> tuple[bytes, bytes, bool]:
    stream = i % 2 == 0
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "tell me a long story " * rng.randint(5, 50)}],
        "max_tokens": rng.randint(150, 300),
        "stream": stream,
    }
    return b"/v1/chat/completions", json.dumps(body).encode(), stream


async def one(port: int, req: tuple[bytes, bytes, bool], tally: Tally) -> None:
    path, body, stream = req
    t = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        writer.write(
            b"POST " + path + b" HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body) + body
        )
        status, _, answer = await asyncio.wait_for(read_answer(reader), 60)
        judge(tally, status, answer, stream, time.monotonic() - t)
        writer.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
        tally.counts["lost"] += 1
        tally.lost_examples.append(f"{type(exc).__name__}: {exc}")


async def phase(fleet: Fleet, drain: float, n: int, seed: int) -> dict[str, object]:
    fleet.gateway = {"timeouts": {"drain": drain}}
    fleet.start_gateway()
    rng = random.Random(seed)
    tally = Tally()
    tasks = [asyncio.create_task(one(fleet.port, slow_request(rng, i), tally)) for i in range(n)]
    await asyncio.sleep(0.7)  # all sent and in flight
    assert fleet.gw_proc is not None
    t_term = time.monotonic()
    fleet.gw_proc.send_signal(signal.SIGTERM)
    await asyncio.gather(*tasks)
    code = await asyncio.to_thread(fleet.gw_proc.wait, 60)
    c = tally.counts
    return {
        "drain_s": drain,
        "in_flight": n,
        "completed": c["ok"],
        "stream_error_event": c["stream_error"],
        "http_503": tally.statuses.get(503, 0),
        "lost": c["lost"],
        "lost_examples": tally.lost_examples[:5],
        "other": {str(k): v for k, v in tally.statuses.items() if k not in (200, 503)},
        "exit_code": code,
        "exit_after_s": round(time.monotonic() - t_term, 2),
    }


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    fleet = Fleet(n_short=1, n_long=1, speedup=args.speedup)
    for i in range(2):
        fleet.backends.append(
            Backend(LONG_LEN if i else SHORT_LEN, args.speedup, fleet.tmp, f"backend{i}")
        )
        fleet.backends[-1].start()
    try:
        long = await phase(fleet, 15.0, args.requests, 1)
        short = await phase(fleet, 0.5, args.requests, 2)
    finally:
        fleet.gw_proc = None
        fleet.stop()
    ok = all(p["lost"] == 0 and p["exit_code"] == 0 for p in (long, short))
    return {
        "benchmark": "drain",
        "quick": args.quick,
        "deadline_long": long,
        "deadline_short": short,
        "pass": ok and long["completed"] == args.requests,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="24 requests in flight per phase")
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--speedup", type=float, default=0.5)
    args = ap.parse_args()
    if args.requests is None:
        args.requests = 24 if args.quick else 64
    emit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
