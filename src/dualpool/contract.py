"""Facts of the vLLM serving contract that every part of dualpool must agree on.

The gateway rejects over-length requests with the same words vLLM uses, the
emulator answers with them, and the engine model checks the same condition, so
the message and the check live here, once.
"""

from __future__ import annotations

import json
import re

__all__ = ["fits_context", "over_length_message", "parse_over_length"]


def fits_context(prompt_tokens: int, max_tokens: int, max_model_len: int) -> bool:
    """vLLM's admission check: prompt + max_tokens must fit in max_model_len."""
    return prompt_tokens + max_tokens <= max_model_len


def over_length_message(
    max_model_len: int,
    max_tokens: int,
    prompt_tokens: int,
    *,
    truncated_tokenization: bool = True,
    with_parameter: bool = True,
) -> str:
    """vLLM's HTTP 400 message for prompt + max_tokens > max_model_len.

    Wording of vLLM's renderer token-length check (vllm/renderers/params.py,
    v0.2x; seen verbatim in served 400s). A text prompt is tokenized with
    truncation at max_model_len - max_tokens + 1 tokens, so the count vLLM
    reports is "at least" that many; pass truncated_tokenization=False for
    a prompt sent as token ids (exact count, no "at least").
    `VLLMValidationError` appends " (parameter=input_tokens, value=P)" to
    the message the client sees; with_parameter=False leaves it off.
    The gateway and the emulator both call this, so they cannot drift.
    """
    if truncated_tokenization:
        limit = max_model_len - max_tokens + 1
        shown = min(prompt_tokens, limit) if limit > 0 else prompt_tokens
        at_least = "at least "
    else:
        shown = prompt_tokens
        at_least = ""
    total = shown + max_tokens
    msg = (
        f"This model's maximum context length is {max_model_len} tokens. However, you "
        f"requested {max_tokens} output tokens and your prompt contains {at_least}{shown} "
        f"input tokens, for a total of {at_least}{total} tokens. Please reduce the length "
        "of the input prompt or the number of requested output tokens."
    )
    if with_parameter:
        msg += f" (parameter=input_tokens, value={shown})"
    return msg


# The message above, read back: one definition of the words, both directions.
_OVER_LENGTH = re.compile(
    r"This model's maximum context length is (\d+) tokens\. However, you requested "
    r"(\d+) output tokens and your prompt contains (?:at least )?(\d+) input tokens"
)


# Older vLLM (OpenAIServing._validate_input): "... However, you requested T tokens
# (P in the messages, C in the completion). ..."
_OVER_LENGTH_OLD = re.compile(
    r"maximum context length is (\d+) tokens\. However, you requested (\d+) tokens "
    r"\((\d+) in the (?:messages|prompt), (\d+) in the completion\)"
)
_MAX_CONTEXT = re.compile(r"maximum context length is (\d+) tokens")


def parse_over_length(status: int, body: bytes) -> tuple[int, int, int] | None:
    """(max_model_len, max_tokens, prompt_tokens) when `body` is vLLM's over-length 400.

    The gateway's misroute check: such an answer from a pool means the request was
    routed too small, and a larger pool should get it. Anything else: None."""
    if status != 400 or len(body) > 65536:
        return None
    try:
        err = json.loads(body)
    except ValueError:
        return None
    if type(err) is not dict:
        return None
    inner = err.get("error", err)  # vLLM >= 0.6: {"error": {...}}; older: flat
    msg = inner.get("message") if type(inner) is dict else None
    if type(msg) is not str:
        return None
    m = _OVER_LENGTH.search(msg)
    if m is not None:
        return int(m.group(1)), int(m.group(2)), int(m.group(3))
    m = _OVER_LENGTH_OLD.search(msg)
    if m is not None:  # vLLM before the renderer check: (prompt in messages, output)
        return int(m.group(1)), int(m.group(4)), int(m.group(3))
    m = _MAX_CONTEXT.search(msg)
    if m is not None:  # other wordings of the same refusal: the counts unknown (0)
        return int(m.group(1)), 0, 0
    return None
