"""Facts of the vLLM serving contract that every part of dualpool must agree on.

The gateway rejects over-length requests with the same words vLLM uses, the
emulator answers with them, and the engine model checks the same condition, so
the message and the check live here, once.
"""

from __future__ import annotations

__all__ = ["fits_context", "over_length_message"]


def fits_context(prompt_tokens: int, max_tokens: int, max_model_len: int) -> bool:
    """vLLM's admission check: prompt + max_tokens must fit in max_model_len."""
    return prompt_tokens + max_tokens <= max_model_len


def over_length_message(max_model_len: int, prompt_tokens: int, max_tokens: int) -> str:
    """The message vLLM's OpenAI server returns (HTTP 400) for an over-length request."""
    total = prompt_tokens + max_tokens
    return (
        f"This model's maximum context length is {max_model_len} tokens. However, you "
        f"requested {max_tokens} output tokens and your prompt contains at least "
        f"{prompt_tokens} input tokens, for a total of at least {total} tokens. Please "
        "reduce the length of the input prompt or the number of requested output tokens."
    )
