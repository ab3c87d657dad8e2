"""End to end with real processes: the openai client -> the gateway -> emulated vLLM pools.

The pools are `dualpool emulate` subprocesses (real sockets, the Llama-3 tokenizer
counting usage), so what the gateway learns and where it routes is checked against
what a vLLM instance of that config would answer.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from dualpool.emulator.testing import EmulatorProcess
from dualpool.gateway.testing import GatewayThread
from dualpool.tokenizers import load_tokenizer

MODEL = "llama-3.1-8b"
B_SHORT = 4096


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[GatewayThread, EmulatorProcess, EmulatorProcess]]:
    common = ["--model", MODEL, "--speedup", "50", "--served-model-name", MODEL]
    with (
        EmulatorProcess([*common, "--max-model-len", str(B_SHORT), "--max-num-seqs", "64"]) as s,
        EmulatorProcess([*common, "--max-model-len", "32768", "--max-num-seqs", "8"]) as lg,
    ):
        config = {
            "pools": [
                {"name": "short", "endpoints": s.urls, "threshold": B_SHORT},
                {"name": "long", "endpoints": lg.urls},
            ],
            "health": {"interval": 0.5, "metrics_interval": 0.5, "timeout": 2.0},
            "log": {"level": "warning", "access": "debug"},
        }
        with GatewayThread(config) as gw:
            yield gw, s, lg


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)


_WORDS = "fleet routes each request by its token budget and learns bytes per token from usage"


def prose(rng: random.Random, nbytes: int) -> str:
    words = _WORDS.split()
    out: list[str] = []
    size = 0
    while size < nbytes:
        w = rng.choice(words)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)


def test_short_lands_short_long_lands_long_and_calibration_converges(
    stack: tuple[GatewayThread, EmulatorProcess, EmulatorProcess],
) -> None:
    gw, _, _ = stack
    c = client(gw.url)
    rng = random.Random(0)
    pools: dict[str, int] = {}
    for i in range(60):
        nbytes = rng.randint(200, 3000)
        raw = c.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": prose(rng, nbytes)}],
            max_tokens=16,
        )
        resp = raw.parse()
        assert resp.usage is not None and resp.usage.completion_tokens == 16
        pool = raw.headers["x-dualpool-pool"]
        pools[pool] = pools.get(pool, 0) + 1
        assert pool == "short", f"request {i} of {nbytes} bytes went {pool}"
    # A prompt of ~6K tokens cannot fit the short pool: it must go long.
    long_text = prose(rng, 24_000)
    raw = c.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": long_text}], max_tokens=16
    )
    assert raw.headers["x-dualpool-pool"] == "long"
    assert raw.parse().usage.prompt_tokens > B_SHORT  # type: ignore[union-attr]

    # The learned ratio matches the tokenizer the emulator counts with.
    tok = load_tokenizer("llama3")
    true_ratio = len(long_text) / tok.count(long_text)
    with client(gw.url)._client as http:
        admin = http.get(gw.url + "/admin/calibrator").json()
    prose_cat = next(x for x in admin["categories"] if x["class"] == "prose")
    assert prose_cat["learned"]
    assert abs(prose_cat["bytes_per_token"] - true_ratio) / true_ratio < 0.05


def test_streaming_through_the_gateway_is_what_the_backend_sends(
    stack: tuple[GatewayThread, EmulatorProcess, EmulatorProcess],
) -> None:
    gw, short, _ = stack
    req: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me about token budgets."}],
        "max_tokens": 12,
        "stream": True,
    }

    def chunks(url: str) -> list[dict[str, Any]]:
        out = []
        for ch in client(url).chat.completions.create(**req):
            d = json.loads(ch.model_dump_json())
            d.pop("id"), d.pop("created")
            out.append(d)
        return out

    via_gateway = chunks(gw.url)
    direct = chunks(short.urls[0])
    # Same chunks in the same order (ids and timestamps differ per request); no
    # usage chunk leaks although the gateway asked the backend for one.
    assert via_gateway == direct
    assert all(ch.get("usage") is None for ch in via_gateway)
    assert via_gateway[-1]["choices"][0]["finish_reason"] == "length"


def test_over_length_for_every_pool_is_rejected_without_a_backend_call(
    stack: tuple[GatewayThread, EmulatorProcess, EmulatorProcess],
) -> None:
    gw, _, _ = stack
    with pytest.raises(openai.BadRequestError) as info:
        client(gw.url).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x " * 10}],
            max_tokens=40_000,
        )
    assert "maximum context length is 32768 tokens" in str(info.value)
