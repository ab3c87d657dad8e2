"""`dualpool bench` against an independent reference client on the same emulated endpoint.

The reference (`_reference`, below) is plain asyncio + httpx and follows vLLM's
`async_request_openai_chat_completions` (vllm/benchmarks/lib/endpoint_request_func.py):
the clock before the POST, TTFT at the first SSE message with non-empty
`choices`, E2E at the last such message. Both clients send the same bodies
(the same prepared requests) at the same arrival times, one after the other,
to one `dualpool emulate` process running Llama-3.1-8B on an A100 in real time
(speedup 1) with long prompts, so the latencies are the engine model's
(hundreds of ms), not the clients'. Asserted: the same request count, and TTFT and E2E p50/p90 within 2%.

Wall clock on a shared machine: when the emulator reports that its engine
loop fell behind (dualpool_emulator_lag_seconds_total), or the machine is
busier than its cores (load average per core >= 1: the two clients' sends then
jitter by more than an engine step, which reorders batches), the timing is the
machine's, not the clients', and the comparison is printed, not asserted.
Measured on a quiet machine: TTFT p50 773.7 vs 778.5 ms, p90 1971.1 vs 1976.9
ms; E2E p50 3611.3 vs 3614.9 ms, p90 7552.4 vs 7550.4 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
import numpy as np
import pytest

from dualpool.bench import BodyMaker, BodyOptions, Endpoint, PromptSynth, RunOptions, run_bench
from dualpool.bench._prompts import Prepared
from dualpool.emulator.testing import EmulatorProcess
from dualpool.tokenizers import load_tokenizer
from dualpool.workload import Request

MODEL = "llama-3.1-8b"
ARGS = ["--model", MODEL, "--gpu", "a100-80gb", "--max-model-len", "8192", "--max-num-seqs",
        "64", "--tokenizer", "bytes", "--speedup", "1", "--served-model-name", MODEL]  # fmt: skip


def _workload(n: int = 20, seed: int = 3) -> list[Request]:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / 2.0, n))
    prompts = rng.integers(2000, 6000, n)
    outputs = rng.integers(20, 120, n)
    return [
        Request(float(a), int(p), int(o), None, None, "prose")
        for a, p, o in zip(t, prompts, outputs, strict=True)
    ]


async def _reference(url: str, plan: list[tuple[float, Prepared]]) -> list[tuple[float, float]]:
    """(TTFT, E2E) per successful request: asyncio + httpx, vLLM's definitions."""
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one(t0: float, at: float, p: Prepared) -> tuple[float, float] | None:
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            headers = {"content-type": "application/json", **dict(p.headers)}
            st = time.perf_counter()
            ttft = latest = None
            async with client.stream("POST", p.path, content=p.body, headers=headers) as r:
                if r.status_code != 200:
                    return None
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    now = time.perf_counter()
                    if json.loads(line[6:]).get("choices"):
                        ttft = now - st if ttft is None else ttft
                        latest = now
            return None if ttft is None or latest is None else (ttft, latest - st)

        t0 = time.perf_counter()
        got = await asyncio.gather(*(one(t0, at, p) for at, p in plan))
    return [g for g in got if g is not None]


def _lag(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("dualpool_emulator_lag_seconds_total")
    )


@pytest.mark.slow
def test_same_count_and_percentiles_as_a_reference_client() -> None:
    reqs = _workload()
    maker = BodyMaker(PromptSynth(load_tokenizer("bytes")), BodyOptions(model=MODEL))
    plan = [(r.arrival_s, maker.make(i, r.prompt_tokens, r.output_tokens, None, r.category, None))
            for i, r in enumerate(reqs)]  # fmt: skip
    with EmulatorProcess(ARGS) as emu:
        url = emu.urls[0]
        ref = asyncio.run(_reference(url, plan))
        lag_ref = _lag(url)

        async def ours() -> list[tuple[float, float]]:
            out = await run_bench([("", Endpoint.parse(url))], reqs, maker, RunOptions())
            return [(r.ttft_s, r.e2e_s) for r in out.results[""] if r.success]

        mine = asyncio.run(ours())
        lag = _lag(url) - lag_ref
    assert len(mine) == len(ref) == len(reqs)
    report, close = [], True
    for k, name in ((0, "ttft"), (1, "e2e")):
        for q in (50, 90):
            a = float(np.percentile([x[k] for x in mine], q))
            b = float(np.percentile([x[k] for x in ref], q))
            report.append(f"{name} p{q}: bench {a * 1000:.1f} ms, reference {b * 1000:.1f} ms")
            close &= abs(a - b) <= 0.02 * b
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    print("\n".join(report) + f"\nemulator lag {lag_ref:.3f} s / {lag:.3f} s, load/core {load:.2f}")
    if lag_ref < 0.05 and lag < 0.05 and load < 1.0:
        assert close, "\n".join(report)
