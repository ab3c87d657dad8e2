"""The OpenAI API through the real `openai` client, and vLLM's error answers."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from emu_helpers import MODEL, metric, scrape

from dualpool.contract import over_length_message
from dualpool.emulator import OUTPUT_TOKENS_HEADER, EmulatorConfig
from dualpool.emulator._openai import Filler
from dualpool.emulator.testing import EmulatorThread
from dualpool.tokenizers import chat_prompt_tokens, load_tokenizer

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Explain paged attention in one paragraph, please."},
]


@pytest.fixture(scope="module")
def client(emu: EmulatorThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=emu.urls[0] + "/v1", api_key="x", max_retries=0, timeout=30)


def test_chat_non_streaming_counts_tokens_exactly(client: openai.OpenAI) -> None:
    tok = load_tokenizer("llama3")
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=7)  # type: ignore[arg-type]
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == MODEL
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None
    assert r.usage.prompt_tokens == chat_prompt_tokens(tok, MESSAGES)
    assert r.usage.completion_tokens == 7 and r.usage.total_tokens == r.usage.prompt_tokens + 7
    assert tok.count(r.choices[0].message.content or "") == 7


def test_chat_streaming_with_usage(client: openai.OpenAI) -> None:
    tok = load_tokenizer("llama3")
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_completion_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) == 12  # one chunk per generated token
    assert content[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in content[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 12
    assert last.usage.prompt_tokens == chat_prompt_tokens(tok, MESSAGES)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in content)
    assert tok.count(text) == 12


def test_completions_prompt_string_and_token_ids(client: openai.OpenAI) -> None:
    tok = load_tokenizer("llama3")
    prompt = "The quick brown fox jumps over the lazy dog."
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=5)
    assert r.id.startswith("cmpl-") and r.object == "text_completion"
    assert r.usage is not None and r.usage.prompt_tokens == tok.count(prompt) + 1  # + BOS
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
    r = client.completions.create(model=MODEL, prompt=[1, 2, 3, 4], max_tokens=3)
    assert r.usage is not None and r.usage.prompt_tokens == 4
    stream = client.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) == 4 and chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_output_length_header_and_default_draw(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=50,
        extra_headers={OUTPUT_TOKENS_HEADER: "9"},
    )
    assert r.usage is not None and r.usage.completion_tokens == 9
    assert r.choices[0].finish_reason == "stop"  # EOS before max_tokens
    r = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=5,
        extra_headers={OUTPUT_TOKENS_HEADER: "900"},
    )
    assert r.usage is not None and r.usage.completion_tokens == 5  # min(header, max_tokens)
    r = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_headers={OUTPUT_TOKENS_HEADER: "3"},
    )
    assert r.usage is not None and r.usage.completion_tokens == 3
    assert r.choices[0].finish_reason == "stop"


def test_over_length_is_vllms_400(client: openai.OpenAI, emu: EmulatorThread) -> None:
    tok = load_tokenizer("llama3")
    prompt_tokens = chat_prompt_tokens(tok, MESSAGES)
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8190)  # type: ignore[arg-type]
    assert ei.value.status_code == 400
    body = ei.value.response.json()
    assert body == {
        "error": {
            "message": over_length_message(8192, 8190, prompt_tokens),
            "type": "BadRequestError",
            "param": "input_tokens",
            "code": 400,
        }
    }
    # Token-id prompts are counted exactly: no "at least".
    r = httpx.post(
        emu.urls[0] + "/v1/completions", json={"prompt": [5] * 100, "max_tokens": 8100}, timeout=10
    )
    assert r.status_code == 400
    assert r.json()["error"]["message"] == over_length_message(
        8192, 8100, 100, truncated_tokenization=False
    )


def test_errors_are_vllm_shaped_never_500(client: openai.OpenAI, emu: EmulatorThread) -> None:
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="gpt-4", messages=MESSAGES)  # type: ignore[arg-type]
    assert ei.value.response.json()["error"] == {
        "message": "The model `gpt-4` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }
    url = emu.urls[0]
    bad = [
        ("/v1/chat/completions", b"{not json"),
        ("/v1/chat/completions", b"[1, 2]"),
        ("/v1/chat/completions", b'{"messages": "hi"}'),
        ("/v1/chat/completions", b'{"messages": [{"content": "no role"}]}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "7"}'),
        ("/v1/chat/completions",
         b'{"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}'),
        ("/v1/completions", b'{"max_tokens": 3}'),
        ("/v1/completions", b'{"prompt": {"a": 1}}'),
        ("/v1/completions", b'{"prompt": []}'),
        ("/tokenize", b"{}"),
    ]  # fmt: skip
    for path, body in bad:
        r = httpx.post(url + path, content=body, timeout=10)
        assert r.status_code == 400, (path, body, r.text)
        err = r.json()["error"]
        assert err["type"] == "BadRequestError" and err["code"] == 400 and err["message"]
    r = httpx.post(
        url + "/v1/chat/completions",
        json={"messages": MESSAGES, "max_tokens": 3},
        headers={OUTPUT_TOKENS_HEADER: "lots"},
        timeout=10,
    )
    assert r.status_code == 400
    assert httpx.get(url + "/v1/chat/completions", timeout=10).status_code == 405
    assert httpx.get(url + "/nope", timeout=10).status_code == 404


def test_models_health_tokenize_metrics(emu: EmulatorThread) -> None:
    url = emu.urls[0]
    r = httpx.get(url + "/health", timeout=10)
    assert r.status_code == 200 and r.content == b""
    models = httpx.get(url + "/v1/models", timeout=10).json()
    card = models["data"][0]
    assert models["object"] == "list"
    assert card["id"] == MODEL and card["root"] == MODEL and card["owned_by"] == "vllm"
    assert card["max_model_len"] == 8192 and card["permission"][0]["object"] == "model_permission"
    tok = httpx.post(url + "/tokenize", json={"prompt": "hello world"}, timeout=10).json()
    assert tok == {
        "count": 3,
        "max_model_len": 8192,
        "tokens": [128000, 15339, 1917],
        "token_strs": None,
    }
    chat = httpx.post(url + "/tokenize", json={"messages": MESSAGES}, timeout=10).json()
    assert chat["count"] == chat_prompt_tokens(load_tokenizer("llama3"), MESSAGES)
    m = scrape(url)
    labels = {"model_name": MODEL, "engine": "0"}
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:num_preemptions_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:time_to_first_token_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
    ):
        metric(m, name, **labels)
    assert metric(m, "vllm:request_success_total", finished_reason="length", **labels) >= 1
    info = metric(m, "vllm:cache_config_info", block_size="16", engine="0")
    assert info == 1.0
    assert metric(m, "vllm:time_to_first_token_seconds_bucket", le="0.001", **labels) >= 0
    assert metric(m, "vllm:e2e_request_latency_seconds_bucket", le="7680.0", **labels) >= 1


def test_filler_is_exact_in_every_tokenizer() -> None:
    for name in ("llama3", "qwen", "bytes"):
        tok = load_tokenizer(name)
        f = Filler(tok)
        for start, n in ((0, 1), (3, 17), (5, 333)):
            assert tok.count(f.text(start, n)) == n, name


def test_served_model_name_and_several_instances() -> None:
    cfg = EmulatorConfig(
        port=0, instances=2, speedup=50, served_model_name="short", tokenizer="bytes"
    )
    with EmulatorThread(cfg) as e:
        assert len(set(e.ports)) == 2
        for url in e.urls:
            c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
            r = c.completions.create(model="short", prompt="abc", max_tokens=2)
            assert r.usage is not None and r.usage.prompt_tokens == 3


def test_connection_close_request_gets_a_well_formed_response() -> None:
    """A client sending `Connection: close` (urllib does) must get headers, then the body."""
    import urllib.request

    from dualpool.emulator import EmulatorConfig
    from dualpool.emulator.testing import EmulatorThread

    cfg = EmulatorConfig(model="llama-3.1-8b", port=0, speedup=50)
    with (
        EmulatorThread(cfg) as emu,
        urllib.request.urlopen(emu.urls[0] + "/v1/models", timeout=10) as r,
    ):
        assert r.headers["connection"] == "close"
        body = json.loads(r.read())
    assert body["data"][0]["max_model_len"] > 0
