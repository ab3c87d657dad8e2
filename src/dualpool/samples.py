"""Seeded, synthetic OpenAI request bodies: the embedded default workload.

Used by `dualpool demo`, tests and benchmarks when no trace is given. Texts are
generated, not copied from any corpus: English-like prose from a word list,
Python-like code, Chinese and Japanese from common characters, tool calls.
"""

from __future__ import annotations

import random
from typing import Any

__all__ = ["TEXT_KINDS", "SampleRequest", "sample_bodies", "sample_text"]

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when if "
    "so no will can more about up them some could into time only other new than these two "
    "may first then do any like my now over such our man me even most made after also did "
    "many before must through back years where much your way well down should because each "
    "just those people how too little state good very make world still own see men work "
    "long get here between both life being under never day same another know while last "
    "might us great old year off come since against go came right used take three system "
    "model request token budget pool latency throughput memory cache context fleet cluster "
    "deployment inference server network performance analysis summary report customer"
).split()
_CODE_LINES = (
    "def {f}(self, {a}: int, {b}: str) -> dict[str, int]:",
    "    result = {{}}",
    "    for i in range({a}):",
    "        if i % 3 == 0 and {b}:",
    "            result[{b} + str(i)] = i * {n}",
    "    return result",
    "class {F}Handler(BaseHandler):",
    "    timeout_s: float = {n}.0",
    "const {f} = async ({a}, {b}) => {{ await fetch(`/api/${{{a}}}`); }};",
    "for (let i = 0; i < {n}; i++) {{ total += {a}[i]; }}",
    "SELECT {a}, COUNT(*) FROM {b}_table WHERE id > {n} GROUP BY {a};",
    "    # NOTE: keep the {b} cache warm between calls",
)
_HANZI = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过"
    "子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体"
    "制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内"
)
_KANA = (
    "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん"
)
_KATAKANA = (
    "アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワン"
)


class SampleRequest:
    """A body plus the content kind it was generated as (for reports)."""

    __slots__ = ("body", "kind")

    def __init__(self, kind: str, body: dict[str, Any]) -> None:
        self.kind = kind
        self.body = body


def _prose(rng: random.Random, nbytes: int) -> str:
    out: list[str] = []
    size = 0
    while size < nbytes:
        sentence = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 18)))
        sentence = sentence[0].upper() + sentence[1:] + rng.choice((". ", ". ", "? ", ".\n\n"))
        out.append(sentence)
        size += len(sentence)
    return "".join(out)


def _code(rng: random.Random, nbytes: int) -> str:
    out: list[str] = []
    size = 0
    while size < nbytes:
        line = rng.choice(_CODE_LINES).format(
            f=rng.choice(("load", "parse", "route", "score", "merge")),
            F=rng.choice(("Pool", "Token", "Cache")),
            a=rng.choice(("items", "count", "rows")),
            b=rng.choice(("name", "key", "prefix")),
            n=rng.randint(2, 999),
        )
        out.append(line + "\n")
        size += len(line) + 1
    return "".join(out)


def _cjk(rng: random.Random, nbytes: int, japanese: bool) -> str:
    out: list[str] = []
    size = 0
    while size < nbytes:
        if japanese:
            chunk = "".join(
                rng.choice(_KANA) if rng.random() < 0.55 else rng.choice(_HANZI + _KATAKANA)
                for _ in range(rng.randint(8, 30))
            )
        else:
            chunk = "".join(rng.choice(_HANZI) for _ in range(rng.randint(8, 30)))
        chunk += "。" if rng.random() < 0.8 else "\n"
        out.append(chunk)
        size += len(chunk.encode("utf-8"))
    return "".join(out)


TEXT_KINDS = ("prose", "code", "zh", "ja")


def sample_text(kind: str, rng: random.Random, nbytes: int) -> str:
    """About `nbytes` UTF-8 bytes of generated text of one kind (`TEXT_KINDS`)."""
    if kind == "prose":
        return _prose(rng, nbytes)
    if kind == "code":
        return _code(rng, nbytes)
    if kind in ("zh", "ja"):
        return _cjk(rng, nbytes, japanese=kind == "ja")
    raise ValueError(f"unknown text kind {kind!r}; expected one of {', '.join(TEXT_KINDS)}")


_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    }
]


def sample_bodies(
    n: int, seed: int = 0, model: str = "llama-3-70b", long_fraction: float = 0.1
) -> list[SampleRequest]:
    """`n` chat bodies: mostly short, `long_fraction` of them long (several K tokens)."""
    rng = random.Random(seed)
    kinds = ("prose", "prose", "prose", "code", "zh", "ja", "tools")
    out: list[SampleRequest] = []
    for _ in range(n):
        kind = rng.choice(kinds)
        long = rng.random() < long_fraction
        nbytes = int(rng.lognormvariate(10.3, 0.5)) if long else int(rng.lognormvariate(6.5, 1.0))
        if kind == "prose":
            text = _prose(rng, nbytes)
        elif kind == "code":
            text = "Explain what this code does:\n\n" + _code(rng, nbytes)
        elif kind in ("zh", "ja"):
            text = _cjk(rng, nbytes, japanese=kind == "ja")
        else:
            text = _prose(rng, min(nbytes, 400))
        messages: list[dict[str, Any]] = []
        if rng.random() < 0.5:
            messages.append({"role": "system", "content": "You are a helpful assistant."})
        messages.append({"role": "user", "content": text})
        body: dict[str, Any] = {"model": model, "messages": messages}
        if kind == "tools":
            body["tools"] = _TOOLS
        r = rng.random()
        if r < 0.6:
            body["max_tokens"] = rng.choice((128, 256, 512, 1024, 2048))
        elif r < 0.8:
            body["max_completion_tokens"] = rng.choice((256, 1024, 4096))
        out.append(SampleRequest(kind, body))
    return out
