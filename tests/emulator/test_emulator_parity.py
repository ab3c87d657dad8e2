"""Parity: a trace replayed through the emulator (HTTP, wall clock, speedup S)
and through the engine model in virtual time gives the same TTFT and E2E
distributions.

Two views, two tolerances:

1. The emulator's own account, vLLM's histograms on /metrics (engine clock,
   timestamps taken when the request reached the server): mean within
   10% + 0.05 s of the engine run, and the empirical CDFs at every vLLM bucket
   boundary within 0.2 (6 of 30 requests). The engine loop is the same
   Scheduler on the same arrivals; what differs is only when each arrival
   falls relative to step boundaries (client send jitter), which can delay a
   request by a step (25-60 ms here) and change the batches after it.
   Measured: TTFT mean 0.419-0.446 s vs 0.445 s in the engine run. When the
   process is starved of CPU (other jobs) its engine loop falls behind, gives
   up the lag and counts it (dualpool_emulator_lag_seconds_total); timing is
   asserted only when that lag is under 1% of the run, else printed.

2. What a client sees (wall time x S): each statistic (mean, p10, p50, p90)
   within 10% + S x 20 ms. A wall delay d shows as d x S virtual seconds;
   the Python httpx client here, loopback HTTP and 1 ms timer granularity add
   ~10 ms of wall time per request on an idle 2-core machine. On a machine
   busier than its core count (other jobs), d is unbounded, so this view is
   only printed there (never assert wall-clock on a shared machine).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time

import httpx

from dualpool.emulator import OUTPUT_TOKENS_HEADER, EmulatorConfig
from dualpool.emulator._metrics import REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS
from dualpool.emulator.testing import EmulatorProcess

SPEEDUP = 4.0
# TP 4 pinned: the smallest feasible TP of this config became 2 with vLLM 0.19's memory
# account (10,512 KV tokens: a KV-bound run, not what this test is about).
ARGS = ["--model", "llama-3-70b", "--gpu", "a100-80gb", "--max-model-len", "8192", "--tp", "4",
        "--max-num-seqs", "128", "--tokenizer", "bytes", "--speedup", str(SPEEDUP)]  # fmt: skip


def _trace(n: int = 30, seed: int = 7) -> list[tuple[float, int, int]]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(2.5)
        out.append((t, rng.randint(200, 2000), rng.randint(20, 200)))
    return out


def _engine_run(trace: list[tuple[float, int, int]]) -> tuple[list[float], list[float]]:
    """The same arrivals through Scheduler in virtual time (step / fast_forward)."""
    cfg = EmulatorConfig(
        model="llama-3-70b",
        gpu="a100-80gb",
        max_model_len=8192,
        max_num_seqs=128,
        tensor_parallel_size=4,
    )
    sched = cfg.build_scheduler()
    reqs = []
    now, i = 0.0, 0
    while i < len(trace) or sched.has_unfinished_requests:
        if not sched.has_unfinished_requests:
            now = max(now, trace[i][0])
        while i < len(trace) and trace[i][0] <= now:
            t, p, o = trace[i]
            reqs.append(sched.add_request(f"r{i}", p, o, t, o))
            i += 1
        if not sched.has_unfinished_requests:
            continue
        ff = sched.fast_forward(now, until_time=trace[i][0] if i < len(trace) else None)
        if ff.steps:
            now = ff.now
            continue
        _, res = sched.step(now)
        now = res.now
    return [r.ttft for r in reqs], [r.e2e_latency for r in reqs]


async def _emulator_run(
    url: str, trace: list[tuple[float, int, int]]
) -> tuple[list[float], list[float]]:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await client.get("/health")  # warm one connection

        async def one(t0: float, arrival: float, prompt: int, output: int) -> tuple[float, float]:
            await asyncio.sleep(max(0.0, t0 + arrival / SPEEDUP - time.perf_counter()))
            body = {"prompt": [9] * prompt, "max_tokens": output, "stream": True}
            sent = time.perf_counter()
            first = None
            async with client.stream(
                "POST", "/v1/completions", json=body, headers={OUTPUT_TOKENS_HEADER: str(output)}
            ) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if first is None and line.startswith("data: {"):
                        first = time.perf_counter()
            end = time.perf_counter()
            assert first is not None
            return (first - sent) * SPEEDUP, (end - sent) * SPEEDUP

        t0 = time.perf_counter() + 0.05
        results = await asyncio.gather(*(one(t0, *req) for req in trace))
    return [r[0] for r in results], [r[1] for r in results]


def _stats(xs: list[float]) -> dict[str, float]:
    q = statistics.quantiles(xs, n=10, method="inclusive")
    return {"mean": statistics.fmean(xs), "p10": q[0], "p50": q[4], "p90": q[8]}


def _histogram(text: str, name: str) -> tuple[float, list[tuple[float, float]]]:
    """(mean, [(le, cumulative fraction)]) of a vLLM histogram on /metrics."""
    total = count = 0.0
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="')[1].split('"')[0]
            if le != "+Inf":
                buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
        elif line.startswith(name + "_sum{"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith(name + "_count{"):
            count = float(line.rsplit(" ", 1)[1])
    return total / count, [(le, c / count) for le, c in buckets]


def test_trace_parity_with_engine_in_virtual_time() -> None:
    trace = _trace()
    sim_ttft, sim_e2e = _engine_run(trace)
    with EmulatorProcess(ARGS) as p:
        emu_ttft, emu_e2e = asyncio.run(_emulator_run(p.urls[0], trace))
        text = httpx.get(p.urls[0] + "/metrics", timeout=10).text
    lag = float(text.split("dualpool_emulator_lag_seconds_total{")[1].split("} ")[1].split()[0])
    report = [f"emulator lag {lag:.3f} s (wall)"]
    # The engine clock is only as good as the process's access to a core: when
    # the engine loop had to give up catching up (lag > 0), timing is distorted
    # by the machine, not by the model; the emulator says so on /metrics.
    timing_ok = lag < 0.01 * trace[-1][0] / SPEEDUP
    for name, sim, bounds in (
        ("vllm:time_to_first_token_seconds", sim_ttft, TTFT_BUCKETS),
        ("vllm:e2e_request_latency_seconds", sim_e2e, REQUEST_LATENCY_BUCKETS),
    ):
        mean, cdf = _histogram(text, name)
        assert [le for le, _ in cdf] == list(bounds)
        sim_mean = statistics.fmean(sim)
        report.append(f"{name} mean: engine {sim_mean:.3f} emulator /metrics {mean:.3f}")
        if not timing_ok:
            continue
        assert abs(mean - sim_mean) <= 0.10 * sim_mean + 0.05, "\n".join(report)
        for le, frac in cdf:
            sim_frac = sum(x <= le for x in sim) / len(sim)
            assert abs(frac - sim_frac) <= 0.2, (name, le, frac, sim_frac)

    slack = SPEEDUP * 0.020
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    client_ok = True
    for name, sim, emu in (("ttft", sim_ttft, emu_ttft), ("e2e", sim_e2e, emu_e2e)):
        s, e = _stats(sim), _stats(emu)
        for k in s:
            report.append(f"client {name} {k}: engine {s[k]:.3f} emulator {e[k]:.3f}")
            client_ok &= abs(e[k] - s[k]) <= 0.10 * s[k] + slack
    print("\n".join(report) + f"\nload per core {load:.2f}")
    if load < 1.0 and timing_ok:
        assert client_ok, "\n".join(report)
