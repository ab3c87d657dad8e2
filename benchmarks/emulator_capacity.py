"""How many concurrent streams one emulator process sustains before its own
overhead distorts the modelled timing.

Usage: python benchmarks/emulator_capacity.py [--quick]

One `dualpool emulate` process (Llama-3.1-8B on one H100, speedup 1, bytes
tokenizer, max_num_seqs 2048) pinned to CPU 0; this process is the load
client, pinned to CPU 1 (taskset semantics via sched_setaffinity), speaking
raw HTTP/1.1 on asyncio streams (uvloop) so that the client costs less per
chunk than the server. For each concurrency C (16, 32, 64, ...): C streaming
completions start together, each with a 128-token prompt and a fixed output
length. Observed: per stream, the steady-state inter-token interval (ITL: from the
read that completed the 4th chunk to the last, over the chunks between) and
E2E. Modelled: the same C requests through the engine model in virtual time
(all prefilled in one step, then decode: ITL = the model's TPOT).
timing_error = max(|ITL_obs / ITL_model - 1|, |E2E_obs / E2E_model - 1|) on
the means. The ramp stops at the first C whose error exceeds 10%;
max_concurrent_streams is the largest C under it. The emulator's own
dualpool_emulator_lag_seconds_total (wall seconds its engine loop gave up
catching up) is reported per level. The machine is shared: numbers are
ratios from one run, not guarantees.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import time

from _common import emit
from dualpool.emulator import EmulatorConfig
from dualpool.emulator.testing import EmulatorProcess

PROMPT = 128
_SKIP = 4
ARGS = ["--model", "llama-3.1-8b", "--gpu", "h100-80gb", "--tp", "1", "--max-model-len", "4096",
        "--max-num-seqs", "2048", "--max-num-batched-tokens", "16384", "--tokenizer", "bytes",
        "--speedup", "1"]  # fmt: skip


def modelled(c: int, output: int) -> tuple[float, float]:
    """(mean E2E, mean ITL) of c identical requests arriving together, virtual seconds."""
    cfg = EmulatorConfig(
        model="llama-3.1-8b", tensor_parallel_size=1, max_model_len=4096,
        max_num_seqs=2048, max_num_batched_tokens=16384,
    )  # fmt: skip
    s = cfg.build_scheduler()
    reqs = [s.add_request(f"r{i}", PROMPT, output, 0.0, output) for i in range(c)]
    now = 0.0
    while s.has_unfinished_requests:
        ff = s.fast_forward(now)
        if ff.steps:
            now = ff.now
            continue
        _, res = s.step(now)
        now = res.now
    e2e = statistics.fmean(r.e2e_latency or 0.0 for r in reqs)
    itl = statistics.fmean(r.tpot or 0.0 for r in reqs)
    return e2e, itl


async def one_stream(port: int, body: bytes) -> tuple[float, float, int]:
    """(E2E, mean ITL, chunks) of one streamed completion over raw HTTP/1.1."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()
    t0 = time.perf_counter()
    writer.write(head + body)
    first = last = 0.0
    chunks = first_chunks = 0
    while True:
        data = await reader.read(65536)
        if not data:
            break
        n = data.count(b'data: {"id"')
        if n:
            now = time.perf_counter()
            chunks += n
            if not first_chunks and chunks >= _SKIP:
                first, first_chunks = now, chunks
            last = now
    end = time.perf_counter()
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    # Steady-state intervals: from the read that completed the first _SKIP
    # chunks to the last one (the early tokens share steps with the prefills
    # of streams that arrived a few hundred microseconds later).
    itl = (last - first) / (chunks - first_chunks) if chunks > first_chunks else 0.0
    return end - t0, itl, chunks


async def level(port: int, c: int, output: int) -> tuple[float, float, int]:
    body = json.dumps({"prompt": [7] * PROMPT, "max_tokens": output, "stream": True}).encode()
    res = await asyncio.gather(*(one_stream(port, body) for _ in range(c)))
    bad = sum(1 for r in res if r[2] != output)
    return statistics.fmean(r[0] for r in res), statistics.fmean(r[1] for r in res), bad


def lag_total(port: int) -> float:
    import httpx

    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text.splitlines():
        if line.startswith("dualpool_emulator_lag_seconds_total"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    output = 64 if args.quick else 128
    levels = [16, 32, 64, 128, 256, 512] if args.quick else [16, 32, 64, 128, 256, 512, 1024, 2048]
    pin = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    table = []
    best = 0
    err_at_best = None
    with EmulatorProcess(ARGS, cpu=0 if pin else None) as proc:
        if pin:
            os.sched_setaffinity(0, {1})
        port = proc.ports[0]
        run(level(port, 4, 4))  # warm-up
        for c in levels:
            m_e2e, m_itl = modelled(c, output)
            lag0 = lag_total(port)
            o_e2e, o_itl, bad = run(level(port, c, output))
            lag = lag_total(port) - lag0
            err = max(abs(o_itl / m_itl - 1), abs(o_e2e / m_e2e - 1))
            row = {
                "concurrency": c,
                "model_e2e_s": round(m_e2e, 4),
                "observed_e2e_s": round(o_e2e, 4),
                "model_itl_ms": round(m_itl * 1e3, 3),
                "observed_itl_ms": round(o_itl * 1e3, 3),
                "timing_error": round(err, 4),
                "lag_s": round(lag, 4),
                "incomplete_streams": bad,
            }
            table.append(row)
            print(
                f"C={c:5d}  E2E {o_e2e:.3f}s vs {m_e2e:.3f}s  ITL {o_itl * 1e3:.2f}ms vs "
                f"{m_itl * 1e3:.2f}ms  error {err:.1%}  emulator lag {lag:.3f}s",
                flush=True,
            )
            if err > 0.10 or bad:
                break
            best, err_at_best = c, err
    emit(
        {
            "benchmark": "emulator_capacity",
            "quick": args.quick,
            "pinned": pin,
            "output_tokens": output,
            "prompt_tokens": PROMPT,
            "max_concurrent_streams": best,
            "timing_error_at_max": None if err_at_best is None else round(err_at_best, 4),
            "table": table,
        }
    )


if __name__ == "__main__":
    main()
