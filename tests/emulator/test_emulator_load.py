"""Overload (queueing, preemption), client disconnects, SIGTERM, start-up refusal."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from emu_helpers import MODEL, metric, scrape

from dualpool.cli.main import main
from dualpool.emulator import OUTPUT_TOKENS_HEADER, EmulatorConfig
from dualpool.emulator.testing import EmulatorProcess, EmulatorThread

LABELS = {"model_name": MODEL, "engine": "0"}


def _wait_for(url: str, name: str, value: float, timeout: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(url)
        if metric(m, name, **LABELS) == value or time.monotonic() > deadline:
            return m
        time.sleep(0.02)


def test_overload_queues_and_preempts() -> None:
    # 760 KV blocks (12,160 tokens): 24 requests of 600 + 800 tokens cannot all
    # be admitted (14,400 prompt tokens) and run out of blocks while decoding.
    cfg = EmulatorConfig(
        model=MODEL,
        tensor_parallel_size=1,
        gpu_memory_utilization=0.2322,  # 760 blocks (vLLM 0.19 memory account)
        max_model_len=4096,
        max_num_seqs=64,
        port=0,
        speedup=20,
    )
    n, prompt, output = 24, 600, 800
    with EmulatorThread(cfg) as emu:
        url = emu.urls[0]
        assert emu.server.instances[0].sched.kv.num_gpu_blocks == 760

        def one(i: int) -> httpx.Response:
            return httpx.post(
                url + "/v1/completions",
                json={"model": MODEL, "prompt": [7] * prompt, "max_tokens": output},
                timeout=60,
            )

        max_waiting = 0.0
        max_kv = 0.0
        with ThreadPoolExecutor(n) as pool:
            futs = [pool.submit(one, i) for i in range(n)]
            while not all(f.done() for f in futs):
                m = scrape(url)
                max_waiting = max(max_waiting, metric(m, "vllm:num_requests_waiting", **LABELS))
                max_kv = max(max_kv, metric(m, "vllm:kv_cache_usage_perc", **LABELS))
                time.sleep(0.01)
            responses = [f.result() for f in futs]
        assert all(r.status_code == 200 for r in responses)
        assert all(r.json()["usage"]["completion_tokens"] == output for r in responses)
        m = _wait_for(url, "vllm:num_requests_running", 0)
        assert max_waiting > 0
        assert max_kv > 0.9
        assert metric(m, "vllm:num_preemptions_total", **LABELS) > 0
        # Recomputed tokens are not generated twice.
        assert metric(m, "vllm:generation_tokens_total", **LABELS) == n * output
        assert metric(m, "vllm:kv_cache_usage_perc", **LABELS) == 0.0
        assert metric(m, "vllm:request_success_total", finished_reason="length", **LABELS) == n


def test_client_disconnect_frees_the_slot(emu: EmulatorThread) -> None:
    url = emu.urls[0]
    before = metric(scrape(url), "vllm:request_success_total", finished_reason="abort", **LABELS)
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "go on forever"}],
        max_tokens=8000,
        stream=True,
    )
    it = iter(stream)
    next(it), next(it), next(it)  # role chunk and two tokens
    assert metric(scrape(url), "vllm:num_requests_running", **LABELS) == 1
    stream.close()
    m = _wait_for(url, "vllm:num_requests_running", 0)
    assert metric(m, "vllm:num_requests_running", **LABELS) == 0
    assert metric(m, "vllm:kv_cache_usage_perc", **LABELS) == 0.0
    # A non-streaming client that times out goes away too.
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            url + "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "long"}], "max_tokens": 8000},
            timeout=0.3,
        )
    m = _wait_for(url, "vllm:num_requests_running", 0)
    assert metric(m, "vllm:num_requests_running", **LABELS) == 0
    aborted = metric(m, "vllm:request_success_total", finished_reason="abort", **LABELS)
    assert aborted == before + 2


def test_sigterm_exits_zero_and_ends_streams() -> None:
    with EmulatorProcess(
        [
            "--model",
            "llama-3.1-8b",
            "--gpu",
            "h100-80gb",
            "--speedup",
            "1",
            "--tokenizer",
            "bytes",
            "--shutdown-grace",
            "0.2",
        ]
    ) as p:
        url = p.urls[0]
        assert p.ready["tensor_parallel_size"] == 1
        with httpx.stream(
            "POST",
            url + "/v1/completions",
            json={"prompt": "abc", "max_tokens": 4000, "stream": True},
            headers={OUTPUT_TOKENS_HEADER: "4000"},
            timeout=30,
        ) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line)
            assert first.startswith("data: {")
            code = p.terminate()
            rest = [line for line in lines if line]
        assert code == 0
        assert rest[-1] == "data: [DONE]"  # the in-flight stream was ended cleanly
        assert "Traceback" not in p.stderr_text(limit=1 << 20)


def test_infeasible_config_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["emulate", "--model", "llama-3-70b", "--gpu", "a100-80gb", "--tp", "2"]
    # (At 8K vLLM 0.19's memory account leaves 10,512 KV tokens at TP 2; 16K does not fit.)
    code = main([*argv, "--max-model-len", "16384", "--max-num-seqs", "128"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("dualpool emulate: error: ")
    assert "tensor_parallel_size=2" in err and "memory" in err
    # Without --tp the smallest feasible TP is chosen (4 for the paper's 70B pools).
    cfg = EmulatorConfig(
        model="llama-3-70b", gpu="a100-80gb", max_model_len=16384, max_num_seqs=128
    )
    assert cfg.engine_config().tensor_parallel_size == 4
