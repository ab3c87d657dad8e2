"""Request validation as vLLM's (pydantic models in vllm/entrypoints/openai/protocol.py,
then the model check in serving_chat): defect 7 of issue 16."""

from __future__ import annotations

import json

import httpx
import pytest
from emu_helpers import MODEL

from dualpool.emulator.testing import EmulatorThread

USER = [{"role": "user", "content": "hello there"}]


def _post(emu: EmulatorThread, body: object) -> httpx.Response:
    return httpx.post(emu.urls[0] + "/v1/chat/completions", json=body, timeout=10)


def test_streamed_usage_omits_prompt_tokens_details(emu: EmulatorThread) -> None:
    r = _post(
        emu,
        {"messages": USER, "max_tokens": 3, "stream": True,
         "stream_options": {"include_usage": True}},
    )  # fmt: skip
    events = [e[6:] for e in r.text.split("\n\n") if e.startswith("data: {")]
    usage = json.loads(events[-1])["usage"]
    assert usage["completion_tokens"] == 3 and "prompt_tokens_details" not in usage
    # the whole answer keeps the key (null), as vLLM's model_dump does
    whole = _post(emu, {"messages": USER, "max_tokens": 3}).json()["usage"]
    assert whole["prompt_tokens_details"] is None


@pytest.mark.parametrize(
    "extra",
    [
        {"stream": None},
        {"stream_options": {}},
        {"stream": None, "stream_options": {}},
        {"stream": False, "stream_options": None},
        {"stream": True, "stream_options": {}},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        {"messages": [{"role": "user", "content": [{"image_url": "http://x/y.png"}]}]},
    ],
)
def test_accepted_as_vllm_accepts(emu: EmulatorThread, extra: dict[str, object]) -> None:
    r = _post(emu, {"messages": USER, "max_tokens": 2, **extra})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "extra",
    [
        {"messages": [{"role": "user", "content": [{"type": 1}]}]},
        {"messages": [{"role": "user", "content": [{}]}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 0}]}]},
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        {"messages": [{"role": "user", "content": [7]}]},
        {"messages": [{"role": "user", "content": 7}]},
        {"stream": True, "stream_options": "yes"},
        {"stream": True, "stream_options": []},
        {"stream": True, "stream_options": {"include_usage": "yes"}},
        {"stream_options": {"include_usage": True}},
        {"stream": "yes"},
        # the body is checked before the model: a bad body with a wrong model is 400
        {"model": {}},
        {"model": "gpt-4", "messages": "not a list"},
    ],
)
def test_refused_as_vllm_refuses(emu: EmulatorThread, extra: dict[str, object]) -> None:
    r = _post(emu, {"messages": USER, "max_tokens": 2, **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == 400


def test_the_model_is_checked_after_the_body(emu: EmulatorThread) -> None:
    assert _post(emu, {"model": "gpt-4", "messages": USER}).status_code == 404
    assert _post(emu, {"model": MODEL, "messages": USER, "max_tokens": 1}).status_code == 200
