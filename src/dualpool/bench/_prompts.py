"""Request bodies for a replay: the trace's token counts as text, or the bodies as given.

A trace of lengths (Azure, length CSVs, CDFs, presets) says how many prompt
tokens each request had, not what they said. `PromptSynth` writes a prompt of
that many tokens in the request's content category (prose, code, Chinese,
Japanese: `dualpool.samples` texts), so a router that estimates from bytes sees
the bytes-per-token of that kind of text, and a backend counts the same tokens:

    base text per category ─ pretokenized once ─► chunks + cumulative token counts
    request (tokens N, start s) ─► chunks s .. j with cum[j] - cum[s] <= N
                                   (+ a cut of chunk j for the last few tokens)

BPE tokenizers (Llama-3, Qwen) merge only inside a pretokenizer chunk, so the
tokens of a run of whole chunks are the sum of the chunks' tokens: the count
is exact up to the cut of the last chunk and the chat template's whitespace
trimming (measured in tests/bench/test_bench_prompts.py). Every request starts
at its own chunk of the base text, so prompts do not share prefixes (a real
vLLM with prefix caching would otherwise serve them from cache).

Requests without a category take one from the mix (`--mix prose=0.6,code=0.3`).
"""

from __future__ import annotations

import bisect
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import regex

from dualpool.errors import ConfigError
from dualpool.samples import TEXT_KINDS, sample_text
from dualpool.tokenizers import Tokenizer, chat_prompt_tokens

__all__ = ["DEFAULT_MIX", "BodyMaker", "Prepared", "PromptSynth", "parse_mix"]

DEFAULT_MIX: dict[str, float] = {"prose": 0.6, "code": 0.25, "zh": 0.1, "ja": 0.05}

# Categories a workload may carry, mapped to the text kinds we can write.
_ALIASES = {"prose": "prose", "code": "code", "zh": "zh", "ja": "ja", "cjk": "zh", "json": "code"}

# The Llama-3 / GPT-4 style pretokenizer (Qwen2's differs only in digit runs).
_PRETOKEN = regex.compile(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def parse_mix(text: str) -> dict[str, float]:
    """`prose=0.6,code=0.3,zh=0.1` -> normalized weights; ConfigError names --mix."""
    out: dict[str, float] = {}
    for item in text.split(","):
        name, eq, value = item.strip().partition("=")
        if not eq or name not in TEXT_KINDS:
            raise ConfigError(
                "--mix", f"expected KIND=WEIGHT with KIND in {', '.join(TEXT_KINDS)}, got {item!r}"
            )
        try:
            w = float(value)
        except ValueError:
            raise ConfigError("--mix", f"weight must be a number, got {item!r}") from None
        if not w >= 0:
            raise ConfigError("--mix", f"weight must be >= 0, got {item!r}")
        out[name] = w
    total = sum(out.values())
    if total <= 0:
        raise ConfigError("--mix", f"weights must not all be zero, got {text!r}")
    return {k: v / total for k, v in out.items() if v > 0}


class _Base:
    """One category's base text, cut into pretokenizer chunks with their token counts."""

    def __init__(self, tok: Tokenizer, kind: str, nbytes: int, seed: int) -> None:
        text = sample_text(kind, random.Random(f"{seed}/{kind}"), nbytes)
        self.text = text
        offsets = [0]
        counts: dict[str, int] = {}
        cum = [0]
        for m in _PRETOKEN.finditer(text):
            # from the end of the last chunk: a gap the pattern skipped stays in a chunk
            piece = text[offsets[-1] : m.end()]
            n = counts.get(piece)
            if n is None:
                n = counts[piece] = tok.count(piece)
            offsets.append(m.end())
            cum.append(cum[-1] + n)
        self.offsets = offsets
        self.cum = cum
        self.chunks = len(offsets) - 1
        self.total = cum[-1]
        self.tok = tok

    def take(self, start: int, tokens: int) -> tuple[str, int]:
        """Text of at most `tokens` tokens from chunk `start` on (wrapping around),
        and how many tokens it falls short by."""
        out: list[str] = []
        need = tokens
        i = start % self.chunks
        cum, offsets, text = self.cum, self.offsets, self.text
        while need > 0:
            j = bisect.bisect_right(cum, cum[i] + need) - 1
            if j > i:
                out.append(text[offsets[i] : offsets[j]])
                need -= cum[j] - cum[i]
                i = j
            if i == self.chunks:
                i = 0
                continue
            if need > 0 and j <= i:
                # The next chunk alone has more tokens than we need: cut it.
                piece = text[offsets[i] : offsets[i + 1]]
                k = len(piece) - 1
                while k > 0 and self.tok.count(piece[:k]) > need:
                    k -= 1
                if k > 0:
                    out.append(piece[:k])
                    need -= self.tok.count(piece[:k])
                break
        return "".join(out), need

    def start_near(self, chunk: int) -> int:
        """The first chunk at or after `chunk` that does not begin with whitespace
        (a chat template trims the content: a leading space would change its tokens)."""
        text, offsets = self.text, self.offsets
        for k in range(64):
            i = (chunk + k) % self.chunks
            if not text[offsets[i]].isspace():
                return i
        return chunk


@dataclass(slots=True)
class Prepared:
    """One request ready to send: the path, headers and JSON body, and what it should be."""

    path: str
    headers: list[tuple[str, str]]
    body: bytes
    # the trace's prompt and output tokens (-1 when the source lacks them)
    prompt_tokens: int
    output_tokens: int
    category: str


class PromptSynth:
    """Prompts of a given token count and category (see the module doc)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        mix: Mapping[str, float] | None = None,
        seed: int = 0,
        base_bytes: int = 160_000,
    ) -> None:
        self.tok = tokenizer
        self.mix = dict(DEFAULT_MIX if mix is None else mix)
        self.seed = seed
        self._kinds = list(self.mix)
        self._cum_w: list[float] = []
        acc = 0.0
        for k in self._kinds:
            acc += self.mix[k]
            self._cum_w.append(acc)
        self._base_bytes = base_bytes
        # one token on its own and after any text: pads the last few tokens
        self.filler = next((p for p in (" the", " a", "x") if tokenizer.count(p) == 1), " ")
        self._bases: dict[str, _Base] = {}
        probe = "hello"
        self.chat_overhead = chat_prompt_tokens(
            tokenizer, [{"role": "user", "content": probe}]
        ) - tokenizer.count(probe)
        # vLLM tokenizes completion prompts with add_special_tokens: Llama-3 adds BOS.
        self.completion_overhead = 1 if tokenizer.name == "llama3" else 0

    def base(self, kind: str) -> _Base:
        b = self._bases.get(kind)
        if b is None:
            b = self._bases[kind] = _Base(self.tok, kind, self._base_bytes, self.seed)
        return b

    def category(self, declared: str | None, index: int) -> str:
        """The text kind of request `index`: its own category, else one from the mix."""
        if declared is not None:
            kind = _ALIASES.get(declared)
            if kind is not None:
                return kind
        u = random.Random(self.seed * 1_000_003 + index).random() * self._cum_w[-1]
        return self._kinds[min(bisect.bisect_right(self._cum_w, u), len(self._kinds) - 1)]

    def text(self, kind: str, tokens: int, index: int) -> str:
        """`tokens` tokens of `kind` text (as counted inside a chat message), starting
        at a place of its own."""
        base = self.base(kind)
        start = base.start_near(random.Random(self.seed * 7_919 + index).randrange(base.chunks))
        text, short = base.take(start, max(1, tokens))
        stripped = text.rstrip()
        if len(stripped) < len(text):
            cut = text.rfind(stripped[-1:]) + 1 if stripped else 0
            # tokens lost to the trimming: count the tail around the cut exactly
            tail = max(0, cut - 8)
            short += self.tok.count(text[tail:]) - self.tok.count(stripped[tail:])
        return stripped + self.filler * short


@dataclass(frozen=True, slots=True)
class BodyOptions:
    model: str
    chat: bool = True
    stream: bool = True
    # send x-dualpool-output-tokens (emulated backends); else ignore_eos + max_tokens
    output_hint: bool = True
    extra_body: Mapping[str, Any] | None = None
    extra_headers: tuple[tuple[str, str], ...] = ()


_OUTPUT_HEADER = "x-dualpool-output-tokens"
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class BodyMaker:
    """Turns workload requests into `Prepared` requests (synthesized or given bodies)."""

    def __init__(self, synth: PromptSynth | None, options: BodyOptions) -> None:
        self.synth = synth
        self.o = options
        self.path = "/v1/chat/completions" if options.chat else "/v1/completions"

    def make(
        self,
        index: int,
        prompt_tokens: int,
        output_tokens: int,
        max_tokens: int | None,
        category: str | None,
        body: Mapping[str, Any] | None,
    ) -> Prepared:
        o = self.o
        headers = list(o.extra_headers)
        if body is not None:
            out = dict(body)
            chat = "messages" in out
            path = "/v1/chat/completions" if chat else "/v1/completions"
            if o.model:
                out["model"] = o.model
            kind = category or "given"
        else:
            if self.synth is None:
                raise ConfigError(
                    "workload", "this workload has no bodies and no prompt synthesizer"
                )
            if prompt_tokens < 0:
                raise ConfigError("workload", f"request {index} has no prompt token count")
            kind = self.synth.category(category, index)
            chat = o.chat
            path = self.path
            if chat:
                n = prompt_tokens - self.synth.chat_overhead
                text = self.synth.text(kind, n, index)
                out = {"model": o.model, "messages": [{"role": "user", "content": text}]}
            else:
                n = prompt_tokens - self.synth.completion_overhead
                out = {"model": o.model, "prompt": self.synth.text(kind, n, index)}
            if max_tokens is not None:
                out["max_completion_tokens" if chat else "max_tokens"] = max_tokens
        limit_key = "max_completion_tokens" if chat else "max_tokens"
        if output_tokens >= 1:
            if o.output_hint:
                headers.append((_OUTPUT_HEADER, str(output_tokens)))
                if not chat and "max_tokens" not in out:
                    # completions default to 16 tokens: make room for the trace's output.
                    out["max_tokens"] = max(output_tokens, 1)
            else:
                # What `vllm bench serve` does: generate exactly the trace's output length.
                out.pop("max_tokens", None)
                out.pop("max_completion_tokens", None)
                out[limit_key] = output_tokens
                out["ignore_eos"] = True
        if o.stream:
            out["stream"] = True
            out["stream_options"] = {"include_usage": True}
        else:
            out.pop("stream", None)
            out.pop("stream_options", None)
        if o.extra_body:
            out.update(o.extra_body)
        return Prepared(path, headers, _dumps(out).encode(), prompt_tokens, output_tokens, kind)
