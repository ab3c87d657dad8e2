"""Chaos: requests through the gateway while backends are killed, paused and reset.

    PYTHONPATH=src .venv/bin/python benchmarks/chaos.py [--quick]

Fleet (loopback): short pool of 3 emulators (one reached through the fault proxy:
resets, mid-answer resets, delays, half-closes, garbage), long pool of 2, spillover
and retries on. While the load runs (80% chat, 50% streamed, 12% long prompts), a
chaos loop takes one backend at a time: SIGKILL and restart on the same port after
1 s, or SIGSTOP for 2 s then SIGCONT. At every moment each request has a backend
that fits it up, so the targets are 0 lost and 0 5xx before the first byte.

Last line: one JSON object (requests, ok, stream_error, http_5xx, lost, faults, rps,
pass). The machine is shared: throughput figures are only indicative.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, percentile
from _fleet import Fleet, Tally, run_load
from dualpool.testing.faultproxy import Faults

PROXY_FAULTS = Faults(
    reset=0.01, reset_mid=0.01, delay=0.01, half_close=0.005, garbage=0.005, delay_s=0.3
)


async def chaos_loop(fleet: Fleet, stop: asyncio.Event, period: float, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    done = {"sigkill_restart": 0, "sigstop": 0}
    i = 0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), period)
            break
        except TimeoutError:
            pass
        b = fleet.backends[rng.randrange(len(fleet.backends))]
        if i % 2 == 0:
            b.kill()
            await asyncio.sleep(1.0)
            await asyncio.to_thread(b.start)
            done["sigkill_restart"] += 1
        else:
            b.pause()
            await asyncio.sleep(2.0)
            b.resume()
            done["sigstop"] += 1
        i += 1
    return done


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    fleet = Fleet(n_short=3, n_long=2, speedup=args.speedup, proxied=(0,)).start()
    try:
        fleet.proxies[0].proxy.faults = PROXY_FAULTS
        stop = asyncio.Event()
        chaos = asyncio.create_task(chaos_loop(fleet, stop, args.period, args.seed))
        t0 = time.monotonic()

        def progress(n: int) -> None:
            if n % 10_000 == 0:
                print(f"{n} requests issued", file=sys.stderr, flush=True)

        tally: Tally = await run_load(
            fleet.port, args.connections, total=args.requests, seed=args.seed,
            on_progress=progress,
        )  # fmt: skip
        elapsed = time.monotonic() - t0
        stop.set()
        faults = await chaos
        proxy = fleet.proxies[0].proxy
        faults.update({f"proxy_{k}": v for k, v in proxy.counts.items()})
    finally:
        fleet.stop()
    c = tally.counts
    return {
        "benchmark": "chaos",
        "quick": args.quick,
        "requests": tally.total,
        "ok": c["ok"],
        "stream_error": c["stream_error"],
        "http_4xx": c["http_4xx"] + c["http_429"],
        "http_5xx": c["http_5xx"],
        "lost": c["lost"],
        "faults": faults,
        "seconds": round(elapsed, 1),
        "rps": round(tally.total / elapsed, 1),
        "ok_p99_ms": round(1000 * percentile(tally.latencies, 99), 1),
        "lost_examples": tally.lost_examples,
        "five_xx_examples": tally.five_xx_examples,
        "pass": c["lost"] == 0 and c["http_5xx"] == 0,
        "note": "shared, loaded 2-core machine: rps indicative only",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="12,000 requests (CI size)")
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--period", type=float, default=None, help="seconds between faults")
    ap.add_argument("--speedup", type=float, default=200.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.requests is None:
        args.requests = 12_000 if args.quick else 100_000
    if args.period is None:
        args.period = 0.7 if args.quick else 3.0
    if args.quick:
        args.connections = min(args.connections, 32)
    emit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
