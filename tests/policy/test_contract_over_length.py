"""dualpool.contract reads vLLM's over-length refusal back (the gateway's misroute check)."""

from __future__ import annotations

import json

from dualpool.contract import over_length_message, parse_over_length


def _body(msg: str) -> bytes:
    return json.dumps({"error": {"message": msg, "type": "BadRequestError", "code": 400}}).encode()


def test_reads_the_message_it_writes() -> None:
    msg = over_length_message(4096, max_tokens=100, prompt_tokens=5000)
    assert parse_over_length(400, _body(msg)) == (4096, 100, 3997)
    exact = over_length_message(4096, 100, 5000, truncated_tokenization=False)
    assert parse_over_length(400, _body(exact)) == (4096, 100, 5000)


def test_older_vllm_wording_and_flat_errors() -> None:
    old = (
        "This model's maximum context length is 8192 tokens. However, you requested 9000 "
        "tokens (8000 in the messages, 1000 in the completion). Please reduce the length of "
        "the messages or completion."
    )
    assert parse_over_length(400, _body(old)) == (8192, 1000, 8000)
    flat = json.dumps({"object": "error", "message": old, "code": 400}).encode()
    assert parse_over_length(400, flat) == (8192, 1000, 8000)
    other = _body("This model's maximum context length is 2048 tokens, sorry")
    assert parse_over_length(400, other) == (2048, 0, 0)


def test_anything_else_is_not_a_misroute() -> None:
    assert parse_over_length(400, _body("'messages' must be a list")) is None
    assert parse_over_length(500, _body(over_length_message(4096, 1, 5000))) is None
    assert parse_over_length(400, b"not json") is None
    assert parse_over_length(400, b"[1, 2]") is None
