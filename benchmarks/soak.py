"""Soak: the highest load the gateway holds, for 10 minutes; memory, fds, added latency.

    PYTHONPATH=src .venv/bin/python benchmarks/soak.py [--quick] [--seconds S] [--rate R]

Two emulators (short and long pool) behind the gateway, the chaos benchmark's request
mix open loop. First a ramp (`--ramp`, 30 s a step; skipped with `--rate`): the
highest rate whose step keeps the p99 added latency under 5 ms with nothing lost or
refused; then the soak at that rate. Every 2 s: the gateway's RSS and open file
descriptors, and the load average. Ten times a second: one probe request
(max_tokens 1, not streamed) straight to the short backend and one through the
gateway, on warm keep-alive connections, from a process of its own (the load
generator's busy event loop would stretch the timings), the order alternating; the
added latency is their difference (p50/p99 per minute). Targets: p99 added latency
< 5 ms, RSS growth < 10% from minute 2 to the end (quick: from 1/5 of the run),
0 lost, and file descriptors flat, meaning no growth over time (not a constant
count: under load the count breathes with the upstream keep-alive connections the
load needs at each moment, so min/max are reported but not judged):

- growth: the median of the fd samples of the last minute is at most FD_SLACK above
  the median of minute 2's (quick: of the first 1/5 vs the last 1/5);
- back to baseline: after the load, the count returns to within FD_SLACK of the count
  before it (idle upstream connections are closed by the backends' keep-alive
  timeout, so this waits up to 30 s for it).

The gateway and each emulator run in a session of their own (with the kernel's
autogroup scheduling, a CPU group each, as separate containers would have; the
load generator's busy loop then does not share the gateway's group);
`--one-session` puts them all in this one. The gateway's share of a core at the
chosen rate is reported beside the figures:
on a small machine the emulators and the load generator, not the gateway, are what
limits the rate. Last line: one JSON object (load average included: a shared
machine's other jobs show up in the latency tail).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

from _common import cpu_seconds, emit, percentile
from _fleet import MODEL, Fleet, Tally, fd_count, head_bytes, read_answer, rss_bytes, run_load

FD_SLACK = 4  # fds: health/metrics fetches open a connection or two at any moment
PROBE_MODEL = "probe"  # served by a fixed backend (benchmarks/_backend.py) in a pool of its own


def probe_body(model: str) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    ).encode()


async def _probe_loop(gw_port: int, fixed_port: int, emu_port: int, interval: float,
                      out: Path) -> None:  # fmt: skip
    """Paired probes (direct, through the gateway) on warm keep-alive connections.

    Two kinds each turn: `fixed`, to the fixed backend (model PROBE_MODEL, its own
    pool), whose answer time hardly varies, so the pair's difference is the
    gateway's own added latency; and `emulator`, to the short-pool emulator (its
    engine steps make both timings of a pair vary by a few ms, independently, so
    their difference has a spread of its own in both directions). Runs in its own
    process (`--probe-loop`), so the load generator's busy event loop does not
    stretch the timings; the order within a pair alternates. One line per pair:
    `t_monotonic kind direct_s through_s`."""
    conns: dict[tuple[int, str], tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
    kinds = (
        ("fixed", fixed_port, probe_body(PROBE_MODEL)),
        ("emulator", emu_port, probe_body(MODEL)),
    )

    async def once(port: int, kind: str, body: bytes) -> float:
        key = (port, kind)
        if key not in conns:
            conns[key] = await asyncio.open_connection("127.0.0.1", port)
            r, w = conns[key]
            w.write(head_bytes(b"/v1/chat/completions", body, port))
            await read_answer(r)  # warm
        r, w = conns[key]
        t = time.monotonic()
        w.write(head_bytes(b"/v1/chat/completions", body, port))
        _status, headers, _ = await read_answer(r)
        dt = time.monotonic() - t
        if headers.get(b"connection", b"").lower() == b"close":
            w.close()
            del conns[key]
        return dt

    flip = False
    with open(out, "a", buffering=1) as f:
        while True:
            for kind, port, body in kinds:
                try:
                    if flip:
                        g = await once(gw_port, kind, body)
                        d = await once(port, kind, body)
                    else:
                        d = await once(port, kind, body)
                        g = await once(gw_port, kind, body)
                    f.write(f"{time.monotonic():.6f} {kind} {d:.6f} {g:.6f}\n")
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                    for _r, w in conns.values():
                        w.transport.abort()
                    conns.clear()
            flip = not flip
            await asyncio.sleep(interval)


class Prober:
    """The probe loop in a child process; `pairs()` reads what it wrote."""

    def __init__(self, gw_port: int, fixed_port: int, emu_port: int, interval: float,
                 out: Path) -> None:  # fmt: skip
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--probe-loop", str(gw_port), str(fixed_port),
             str(emu_port), str(interval), str(out)],
        )  # fmt: skip

    def pairs(self, kind: str = "fixed") -> list[tuple[float, float, float]]:
        """(t_monotonic, direct_s, through_s) for each pair of `kind` so far."""
        rows = []
        with contextlib.suppress(FileNotFoundError), open(self.out) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 4 and parts[1] == kind:
                    rows.append((float(parts[0]), float(parts[2]), float(parts[3])))
        return rows

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class FixedBackend:
    """benchmarks/_backend.py serving PROBE_MODEL: the probes' steady reference."""

    def __init__(self, session: bool) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve().parent / "_backend.py"),
             "--model", PROBE_MODEL, "--max-model-len", "8192", "--lifetime", "7200"],
            stdout=subprocess.PIPE, text=True, start_new_session=session,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready "):
            self.proc.kill()
            raise RuntimeError(f"the fixed backend did not start: {line!r}")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def connections(rate: float) -> int:
    """Client connections for an open-loop `rate`: each carries one request at a time,
    and the mix's answers take ~0.1-0.3 s, so ~0.5 s of requests stay in flight."""
    return max(64, int(rate / 2))


async def find_rate(
    fleet: Fleet, prober: Prober, rates: list[float], step_s: float, target_s: float
) -> tuple[float, list[dict[str, float]]]:
    """The highest rate of `rates` (ascending) whose step keeps p99 added < `target_s`
    with nothing lost and nothing refused; stops at the first step that does not."""
    steps: list[dict[str, float]] = []
    best = 0.0
    for rate in rates:
        t_from = time.monotonic()
        cpu0 = cpu_seconds(pid=fleet.gateway_pid())
        tally = await run_load(
            fleet.port, connections(rate), seconds=step_s, rate=rate, seed=int(rate)
        )
        cpu = cpu_seconds(pid=fleet.gateway_pid()) - cpu0
        added = [g - d for t, d, g in prober.pairs() if t >= t_from]
        emu = [g - d for t, d, g in prober.pairs("emulator") if t >= t_from]
        p99 = percentile(added, 99)
        c = tally.counts
        ok = bool(added) and p99 < target_s and c["lost"] == 0 and c["http_5xx"] == 0
        # Held: and the load generator reached the rate (its connections each wait
        # for their answer, so a rate out of their reach is not a rate the gateway held).
        ok = ok and c["http_429"] == 0 and tally.total >= 0.95 * rate * step_s
        steps.append({
            "rate": rate, "rps": round(tally.total / step_s, 1), "probes": len(added),
            "added_p50_ms": round(1000 * percentile(added, 50), 2),
            "added_p99_ms": round(1000 * p99, 2), "lost": c["lost"],
            "emulator_pair_p1_p99_ms": [round(1000 * percentile(emu, 1), 2),
                                        round(1000 * percentile(emu, 99), 2)],
            "refused": c["http_429"], "gateway_cpu_share": round(cpu / step_s, 3),
            "load_avg_1m": os.getloadavg()[0], "held": ok,
        })  # fmt: skip
        print(f"ramp {rate:.0f} req/s: p99 added {1000 * p99:.2f} ms, held={ok}",
              file=sys.stderr, flush=True)  # fmt: skip
        if not ok:
            break
        best = rate
    return best, steps


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    fixed = FixedBackend(session=not args.one_session)
    probe_pool = {"name": "probe", "endpoints": [f"http://127.0.0.1:{fixed.port}"],
                  "max_model_len": 8192}  # fmt: skip
    fleet = Fleet(
        n_short=1, n_long=1, speedup=args.speedup, own_sessions=not args.one_session,
        extra_models={PROBE_MODEL: [probe_pool]},
    )  # fmt: skip
    try:
        fleet.start()
    except BaseException:
        fixed.stop()
        raise
    pid = fleet.gateway_pid()
    samples: list[tuple[float, int, int]] = []  # (t, rss, fds)
    await asyncio.sleep(1.0)
    prober = Prober(fleet.port, fixed.port, fleet.backends[0].port, args.probe_interval,
                    fleet.tmp / "probes")  # fmt: skip
    ramp: list[dict[str, float]] = []
    try:
        if args.rate is None:
            rates = [float(r) for r in args.ramp.split(",")]
            rate, ramp = await find_rate(fleet, prober, rates, args.ramp_seconds, 0.005)
            # None held: soak at the lowest anyway, so the memory and fd figures exist
            args.rate = rate or rates[0]
        result = await soak(args, fleet, prober, pid, samples)
    finally:
        prober.stop()
        fleet.stop()
        fixed.stop()
    result["ramp"] = ramp
    result["rate_chosen_by"] = "ramp" if ramp else "--rate"
    return result


async def soak(
    args: argparse.Namespace,
    fleet: Fleet,
    prober: Prober,
    pid: int,
    samples: list[tuple[float, int, int]],
) -> dict[str, object]:
    """`args.seconds` at `args.rate`: RSS and fds every 2 s, the probes' added latency."""
    await asyncio.sleep(6.0)  # a ramp's idle upstream connections close (5 s keep-alive)
    fds_before = fd_count(pid)
    t0 = time.monotonic()
    stop = asyncio.Event()
    loads: list[float] = []

    async def sampler() -> None:
        while not stop.is_set():
            samples.append((time.monotonic() - t0, rss_bytes(pid), fd_count(pid)))
            loads.append(os.getloadavg()[0])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)

    def progress(n: int) -> None:
        if n % 20_000 == 0:
            print(f"{n} requests, {time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)

    cpu0 = cpu_seconds(pid=pid)
    task = asyncio.create_task(sampler())
    tally: Tally = await run_load(
        fleet.port, connections(args.rate), seconds=args.seconds, rate=args.rate,
        on_progress=progress,
    )  # fmt: skip
    gw_cpu = cpu_seconds(pid=pid) - cpu0
    stop.set()
    await task
    rss_after, fds_at_end = rss_bytes(pid), fd_count(pid)
    settle_t = time.monotonic()
    fds_after = fds_at_end
    while fds_after > fds_before + FD_SLACK and time.monotonic() - settle_t < 30.0:
        await asyncio.sleep(0.5)
        fds_after = fd_count(pid)
    settle_s = time.monotonic() - settle_t
    elapsed = settle_t - t0
    added = [(t - t0, g - d) for t, d, g in prober.pairs() if t0 <= t <= settle_t]
    emu_pairs = [(d, g) for t, d, g in prober.pairs("emulator") if t0 <= t <= settle_t]
    emu_added = [g - d for d, g in emu_pairs]
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
        "connections": connections(args.rate),
        "requests": tally.total,
        "ok": c["ok"],
        "stream_error": c["stream_error"],
        "http_5xx": c["http_5xx"],
        "lost": c["lost"],
        "probes": len(all_added),
        "added_p50_ms": round(1000 * percentile(all_added, 50), 2),
        "added_p99_ms": round(1000 * p99, 2),
        "added_by_minute": per_min,
        # The same pairs against the emulator: its step timing spreads both sides.
        "emulator_pairs": len(emu_pairs),
        "emulator_direct_p50_p99_ms": [
            round(1000 * percentile([d for d, _ in emu_pairs], q), 2) for q in (50, 99)
        ],
        "emulator_added_p1_p50_p99_ms": [
            round(1000 * percentile(emu_added, q), 2) for q in (1, 50, 99)
        ],
        "gateway_cpu_share": round(gw_cpu / args.seconds, 3),
        "load_avg_1m_p50": round(statistics.median(loads), 2) if loads else None,
        "load_avg_1m_max": round(max(loads), 2) if loads else None,
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
        "cores": os.cpu_count(),
        "own_sessions": not args.one_session,
    }


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(143)  # the finally blocks stop the fleet (its own sessions)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="60 s soak, 10 s ramp steps")
    ap.add_argument("--seconds", type=float, default=None, help="soak length (600)")
    ap.add_argument(
        "--rate", type=float, default=None,
        help="soak at this rate; default: the highest --ramp rate holding p99 added < 5 ms",
    )  # fmt: skip
    ap.add_argument(
        "--ramp", default="100,200,300,400,500,600,700,800,1000,1200", help="rates tried"
    )
    ap.add_argument("--ramp-seconds", type=float, default=None, help="per ramp step (30)")
    ap.add_argument("--probe-interval", type=float, default=0.1, help="seconds between pairs")
    ap.add_argument("--speedup", type=float, default=200.0)
    ap.add_argument(
        "--one-session", action="store_true",
        help="gateway and emulators in this process's session (one CPU autogroup) "
        "instead of one each, as separate containers would be",
    )  # fmt: skip
    if len(sys.argv) == 7 and sys.argv[1] == "--probe-loop":
        gw, fixed, emu, interval, out = sys.argv[2:]
        asyncio.run(_probe_loop(int(gw), int(fixed), int(emu), float(interval), Path(out)))
        return
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if args.ramp_seconds is None:
        args.ramp_seconds = 10.0 if args.quick else 30.0
    if args.seconds is None:
        args.seconds = 60.0 if args.quick else 600.0
    emit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
