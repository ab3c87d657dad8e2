"""Soak: steady load through the gateway for 10 minutes; memory, fds, added latency.

    PYTHONPATH=src .venv/bin/python benchmarks/soak.py [--quick] [--seconds S] [--rate R]

Two emulators (short and long pool), the chaos benchmark's request mix at a steady
open-loop rate (default 300 req/s). Every 2 s: the gateway's RSS and open file
descriptors. Twice a second: one probe request (max_tokens 1, not streamed) straight
to the short backend and one through the gateway, back to back; the added latency is
their difference (p50/p99 per minute). Targets: p99 added latency < 5 ms, RSS growth
< 10% from minute 2 to the end (quick: from 1/5 of the run), 0 lost, and file
descriptors flat, meaning no growth over time (not a constant count: under load the
count breathes with the upstream keep-alive connections the load needs at each
moment, so min/max are reported but not judged):

- growth: the median of the fd samples of the last minute is at most FD_SLACK above
  the median of minute 2's (quick: of the first 1/5 vs the last 1/5);
- back to baseline: after the load, the count returns to within FD_SLACK of the count
  before it (idle upstream connections are closed by the backends' keep-alive
  timeout, so this waits up to 30 s for it).

Last line: one JSON object. Shared, loaded machine: latency figures include its noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

from _common import emit, percentile
from _fleet import MODEL, Fleet, Tally, fd_count, head_bytes, read_answer, rss_bytes, run_load

FD_SLACK = 4  # fds: health/metrics fetches open a connection or two at any moment
PROBE = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
).encode()


async def probe_pair(gw_port: int, be_port: int) -> tuple[float, float]:
    """(direct, through) seconds for one probe each, on fresh keep-alive connections."""
    out = []
    for port in (be_port, gw_port):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        # warm the connection, then time the second request on it
        for i in range(2):
            t = time.monotonic()
            w.write(head_bytes(b"/v1/chat/completions", PROBE, port))
            _status, _, _ = await read_answer(r)
            if i:
                out.append(time.monotonic() - t)
        w.close()
    return out[0], out[1]


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    fleet = Fleet(n_short=1, n_long=1, speedup=args.speedup).start()
    pid = fleet.gateway_pid()
    samples: list[tuple[float, int, int]] = []  # (t, rss, fds)
    added: list[tuple[float, float]] = []  # (t, added seconds)
    await asyncio.sleep(1.0)
    fds_before = fd_count(pid)
    t0 = time.monotonic()
    stop = asyncio.Event()

    async def sampler() -> None:
        while not stop.is_set():
            samples.append((time.monotonic() - t0, rss_bytes(pid), fd_count(pid)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)

    async def prober() -> None:
        while not stop.is_set():
            try:
                d, g = await probe_pair(fleet.port, fleet.backends[0].port)
                added.append((time.monotonic() - t0, g - d))
            except (OSError, asyncio.IncompleteReadError):
                pass
            await asyncio.sleep(0.5)

    lags: list[float] = []  # this process's own event-loop lag (the probes' clock)

    async def lag_monitor() -> None:
        # The probes are timed on the load generator's loop: when it is late, both
        # timings of a pair stretch unequally. Reported beside the added latency.
        while not stop.is_set():
            t = time.monotonic()
            await asyncio.sleep(0.005)
            lags.append(max(0.0, time.monotonic() - t - 0.005))

    def progress(n: int) -> None:
        if n % 20_000 == 0:
            print(f"{n} requests, {time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)

    try:
        tasks = [asyncio.create_task(c) for c in (sampler(), prober(), lag_monitor())]
        tally: Tally = await run_load(
            fleet.port, 64, seconds=args.seconds, rate=args.rate, on_progress=progress
        )
        stop.set()
        await asyncio.gather(*tasks)
        rss_after, fds_at_end = rss_bytes(pid), fd_count(pid)
        settle_t = time.monotonic()
        fds_after = fds_at_end
        while fds_after > fds_before + FD_SLACK and time.monotonic() - settle_t < 30.0:
            await asyncio.sleep(0.5)
            fds_after = fd_count(pid)
        settle_s = time.monotonic() - settle_t
    finally:
        fleet.stop()
    elapsed = settle_t - t0
    start_at = 120.0 if args.seconds >= 300 else args.seconds / 5
    later = [s for s in samples if s[0] >= start_at]
    rss_start, rss_end = later[0][1], rss_after
    growth = (rss_end - rss_start) / rss_start
    fds = [s[2] for s in later]  # under load (the load's 64 connections open)
    # Growth: a window's median (robust to the pools' breathing), early vs last.
    window = 60.0 if args.seconds >= 300 else args.seconds / 5
    early = [s[2] for s in samples if start_at - window <= s[0] < start_at] or fds[:1]
    last = [s[2] for s in samples if s[0] >= elapsed - window] or fds[-1:]
    fds_early, fds_last = statistics.median(early), statistics.median(last)
    fds_growth_ok = fds_last - fds_early <= FD_SLACK
    fds_back_ok = fds_after <= fds_before + FD_SLACK
    fds_by_min: dict[str, list[int]] = {}
    for t, _, n in samples:
        fds_by_min.setdefault(str(int(t // 60) + 1), []).append(n)
    per_min: dict[str, dict[str, float]] = {}
    for m in range(int(elapsed // 60) + 1):
        xs = [a for t, a in added if m * 60 <= t < (m + 1) * 60]
        if xs:
            per_min[str(m + 1)] = {
                "p50_ms": round(1000 * percentile(xs, 50), 2),
                "p99_ms": round(1000 * percentile(xs, 99), 2),
            }
    all_added = [a for _, a in added]
    p99 = percentile(all_added, 99)
    c = tally.counts
    return {
        "benchmark": "soak",
        "quick": args.quick,
        "seconds": round(elapsed, 1),
        "rate_target": args.rate,
        "rps": round(tally.total / args.seconds, 1),
        "requests": tally.total,
        "ok": c["ok"],
        "stream_error": c["stream_error"],
        "http_5xx": c["http_5xx"],
        "lost": c["lost"],
        "probes": len(all_added),
        "added_p50_ms": round(1000 * percentile(all_added, 50), 2),
        "added_p99_ms": round(1000 * p99, 2),
        "added_by_minute": per_min,
        "client_loop_lag_p99_ms": round(1000 * percentile(lags, 99), 2),
        "rss_from_s": round(later[0][0], 1),
        "rss_start_mb": round(rss_start / 2**20, 1),
        "rss_end_mb": round(rss_end / 2**20, 1),
        "rss_growth": round(growth, 4),
        "fds_before_load": fds_before,
        "fds_min": min(fds),
        "fds_max": max(fds),
        "fds_median_by_minute": {m: statistics.median(v) for m, v in fds_by_min.items()},
        "fds_median_early": fds_early,
        "fds_median_last": fds_last,
        "fds_at_load_end": fds_at_end,
        "fds_after_load": fds_after,
        "fds_settle_s": round(settle_s, 1),
        "fds_flat": fds_growth_ok and fds_back_ok,
        "pass": c["lost"] == 0 and growth < 0.10 and p99 < 0.005 and fds_growth_ok and fds_back_ok,
        "note": "shared, loaded 2-core machine (other sessions' jobs): latency includes noise",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="60 s")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--rate", type=float, default=300.0)
    ap.add_argument("--speedup", type=float, default=200.0)
    args = ap.parse_args()
    if args.seconds is None:
        args.seconds = 60.0 if args.quick else 600.0
    emit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
