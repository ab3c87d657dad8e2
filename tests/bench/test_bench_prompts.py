"""Synthesized prompts have the trace's token counts, in the request's category."""

from __future__ import annotations

import json

import pytest

from dualpool.bench import BodyMaker, BodyOptions, PromptSynth, parse_mix
from dualpool.errors import ConfigError
from dualpool.tokenizers import chat_prompt_tokens, load_tokenizer


@pytest.mark.parametrize("tokenizer", ["llama3", "bytes"])
@pytest.mark.parametrize("kind", ["prose", "code", "zh", "ja"])
def test_chat_prompt_tokens_match_the_target(tokenizer: str, kind: str) -> None:
    tok = load_tokenizer(tokenizer)
    synth = PromptSynth(tok, seed=1)
    errors = []
    for i, n in enumerate([15, 40, 130, 900, 4000, 20000] * 5):
        text = synth.text(kind, n - synth.chat_overhead, i)
        got = chat_prompt_tokens(tok, [{"role": "user", "content": text}])
        errors.append(got - n)
    exact = sum(e == 0 for e in errors) / len(errors)
    assert exact >= 0.8 and max(map(abs, errors)) <= 2, errors


def test_prompts_do_not_share_prefixes() -> None:
    synth = PromptSynth(load_tokenizer("llama3"))
    heads = {synth.text("prose", 200, i)[:30] for i in range(50)}
    assert len(heads) >= 48


def test_body_with_hint_and_without() -> None:
    synth = PromptSynth(load_tokenizer("bytes"))
    hinted = BodyMaker(synth, BodyOptions(model="m")).make(0, 100, 37, 512, "code", None)
    body = json.loads(hinted.body)
    assert ("x-dualpool-output-tokens", "37") in hinted.headers
    assert body["max_completion_tokens"] == 512 and "ignore_eos" not in body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    plain = BodyMaker(synth, BodyOptions(model="m", output_hint=False)).make(
        0, 100, 37, 512, "code", None
    )
    body = json.loads(plain.body)
    assert not plain.headers
    assert body["max_completion_tokens"] == 37 and body["ignore_eos"] is True
    comp = BodyMaker(synth, BodyOptions(model="m", chat=False)).make(0, 100, 37, None, None, None)
    assert comp.path == "/v1/completions" and json.loads(comp.body)["max_tokens"] == 37


def test_given_bodies_are_sent_as_given() -> None:
    given = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.3}
    p = BodyMaker(None, BodyOptions(model="served")).make(3, -1, -1, None, None, given)
    body = json.loads(p.body)
    assert body["messages"] == given["messages"] and body["temperature"] == 0.3
    assert body["model"] == "served" and not p.headers


def test_category_mix() -> None:
    assert parse_mix("prose=3,code=1") == {"prose": 0.75, "code": 0.25}
    synth = PromptSynth(load_tokenizer("bytes"), mix={"zh": 1.0})
    assert synth.category(None, 5) == "zh" and synth.category("code", 5) == "code"
    for bad in ("prose", "klingon=1", "prose=-1", "prose=0"):
        with pytest.raises(ConfigError, match="--mix"):
            parse_mix(bad)
