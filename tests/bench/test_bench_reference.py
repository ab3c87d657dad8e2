"""`dualpool bench` against an independent reference client on the same emulated endpoint.

The reference (`_reference`, below) is plain asyncio + httpx and follows vLLM's
`async_request_openai_chat_completions` (vllm/benchmarks/lib/endpoint_request_func.py):
the clock when the POST goes out, TTFT at the first SSE message with non-empty
`choices`, E2E at the last such message.

Both clients run at once, in one event loop, against one `dualpool emulate`
process (Llama-3.1-8B on an H100, real time): every request is sent by both at
its arrival time, so each pair of copies arrives together, is prefilled in the
same engine step (the step's token budget, 65,536, holds several pairs) and
decodes in the same steps (one long request keeps the engine stepping, so an
arrival never starts a step alone). Both clocks start when the request goes on
the wire (the bench's at its write; the reference's at httpcore's
`http11.send_request_headers.started` trace event, its request built before
its time as the bench's are), so neither client's request-building work is
counted as latency. The server's behaviour, and the machine's load, is then the
same for both clients; what differs is only how each measures.

Asserted: the same request count; at any load, the paired difference (the two
copies of each request, one per client) within 2% at the median, for TTFT and
E2E; on a machine not busier than its cores, also TTFT and E2E p50/p90 of the
two runs within 2%. Under load, the scheduler can stall the loop between the
two copies' writes and the engine then serves them a step or more apart: the
tails of the paired differences grow, the medians do not (docs/bench.md has
the figures).
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
ARGS = ["--model", MODEL, "--gpu", "h100-80gb", "--max-model-len", "8192", "--max-num-seqs",
        "64", "--max-num-batched-tokens", "65536", "--tokenizer", "bytes", "--speedup", "1",
        "--served-model-name", MODEL]  # fmt: skip


def _workload(n: int = 120, seed: int = 3) -> list[Request]:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / 5.0, n))
    prompts = rng.integers(1000, 4000, n)
    outputs = rng.integers(20, 80, n)
    return [
        Request(float(a), int(p), int(o), None, None, "prose")
        for a, p, o in zip(t, prompts, outputs, strict=True)
    ]


async def _reference(
    client: httpx.AsyncClient, plan: list[tuple[float, Prepared]]
) -> dict[int, tuple[float, float]]:
    """(TTFT, E2E) per successful request by index: asyncio + httpx, vLLM's definitions."""

    async def one(t0: float, at: float, p: Prepared) -> tuple[float, float] | None:
        sent: list[float] = []

        async def trace(event: str, info: dict[str, object]) -> None:
            # httpcore's hook: the request's first byte is about to go on the wire
            if event == "http11.send_request_headers.started":
                sent.append(time.perf_counter())

        # Built before its time, as the bench builds its requests before the run:
        # both clocks start when the request goes on the wire.
        headers = {"content-type": "application/json", **dict(p.headers)}
        request = client.build_request(
            "POST", p.path, content=p.body, headers=headers, extensions={"trace": trace}
        )
        await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
        ttft = latest = None
        r = await client.send(request, stream=True)
        try:
            st = sent[0]
            if r.status_code != 200:
                return None
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                now = time.perf_counter()
                if json.loads(line[6:]).get("choices"):
                    ttft = now - st if ttft is None else ttft
                    latest = now
        finally:
            await r.aclose()
        return None if ttft is None or latest is None else (ttft, latest - st)

    t0 = time.perf_counter()
    got = await asyncio.gather(*(one(t0, at, p) for at, p in plan))
    return {i: g for i, g in enumerate(got) if g is not None}


async def _keep_busy(client: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "keep going"}],
            "max_tokens": 6000, "stream": True}  # fmt: skip
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        async for _ in r.aiter_bytes():
            pass


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

        async def both() -> tuple[dict[int, tuple[float, float]], dict[int, tuple[float, float]]]:
            async def ours() -> dict[int, tuple[float, float]]:
                out = await run_bench([("", Endpoint.parse(url))], reqs, maker, RunOptions())
                return {r.index: (r.ttft_s, r.e2e_s) for r in out.results[""] if r.success}

            # The client exists before the clocks start: both clients' t0 fall in
            # the same event-loop turn, so the two copies of a request go together.
            # The emulator closes keep-alive connections idle for 5 s, as vLLM (uvicorn)
            # does: the reference keeps them 4 s, so it never reuses one being closed.
            limits = httpx.Limits(
                max_connections=100, max_keepalive_connections=100, keepalive_expiry=4.0
            )
            async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
                # One long request keeps the engine stepping throughout: an idle engine
                # would start a step for the first copy alone, before the second is read.
                keeper = asyncio.create_task(_keep_busy(client))
                # Open the reference's connections beforehand, as the bench's own
                # are cheap to open: what is compared is timing, not connecting.
                await asyncio.gather(*(client.get("/health") for _ in range(64)))
                await asyncio.sleep(0.2)
                try:
                    ref, mine = await asyncio.gather(_reference(client, plan), ours())
                    return mine, ref
                finally:
                    keeper.cancel()

        mine, ref = asyncio.run(both())
        lag = _lag(url)
    assert len(mine) == len(ref) == len(reqs)
    report, close, paired = [], True, True
    for k, name in ((0, "ttft"), (1, "e2e")):
        for q in (50, 90):
            a = float(np.percentile([x[k] for x in mine.values()], q))
            b = float(np.percentile([x[k] for x in ref.values()], q))
            report.append(f"{name} p{q}: bench {a * 1000:.1f} ms, reference {b * 1000:.1f} ms")
            close &= abs(a - b) <= 0.02 * b
        # The two copies of request i, each measured by one client: the relative
        # difference per pair. Its median is the clients' disagreement; its tails
        # are pairs the engine split across steps (the server, not the clients).
        rel = np.array([(mine[i][k] - ref[i][k]) / ref[i][k] for i in mine])
        report.append(
            f"{name} paired (bench - reference) / reference: median {np.median(rel):+.2%}, "
            f"p5 {np.percentile(rel, 5):+.2%}, p95 {np.percentile(rel, 95):+.2%}"
        )
        paired &= abs(float(np.median(rel))) <= 0.02
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    print("\n".join(report) + f"\nemulator lag {lag:.3f} s, load per core {load:.2f}")
    if lag >= 0.05:
        pytest.skip(f"the emulator fell {lag:.2f} s behind: its timing is not the model's")
    # At any load: the two clients agree on the same requests within 2% (paired
    # median). On a machine not busier than its cores, also the percentiles of
    # the two runs: under load, the httpx client's Python (milliseconds per
    # request, the bench's microseconds) delays its copy past an engine step
    # boundary more often, and the copies' server-side latencies differ.
    assert paired, "\n".join(report)
    if load < 1.0:
        assert close, "\n".join(report)
