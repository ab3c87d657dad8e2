"""Content classes: which bytes-per-token regime a piece of text is in.

A class is decided in one bounded pass over the text, without a tokenizer, from
primitives CPython runs in C (`str.isascii` is O(1), `str.count` and a compiled
regex `search` scan memory): the request path must stay in microseconds.

    text ──► ASCII? ──yes──► code-like punctuation density ≥ threshold? ─► "code" | "prose"
               │
               no ─► mostly multi-byte? ─► kana ─► "ja" │ hangul ─► "ko" │ han ─► "zh" │ else "other"
                          │
                          no (a little non-ASCII in Latin text) ─► ASCII rules above

Only a window of the text (the first `window` characters) is inspected, so the
cost of classification is bounded whatever the prompt's size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "BUILTIN_CLASSES",
    "STRUCTURED_CLASS",
    "ClassifierConfig",
    "ContentClassifier",
]

# The built-in classes; a config may enable a subset (disabled ones map to `fallback`).
PROSE: Final = "prose"
CODE: Final = "code"
ZH: Final = "zh"
JA: Final = "ja"
KO: Final = "ko"
OTHER: Final = "other"
# Tool definitions, tool calls and JSON: counted apart from free text.
STRUCTURED_CLASS: Final = "json"
BUILTIN_CLASSES: tuple[str, ...] = (PROSE, CODE, ZH, JA, KO, OTHER, STRUCTURED_CLASS)

# Scripts are told apart by UTF-8 lead bytes, searched with `bytes.find` on the
# encoded window: a C memchr, where a regex character class costs ~20 ns per character.
#   kana     U+3040-U+30FF  ->  E3 81 xx, E3 82 xx, E3 83 xx
#   hangul   U+B000-U+CFFF  ->  EB xx xx, EC xx xx   (the bulk of U+AC00-U+D7AF)
#   han      U+4E00-U+9FFF  ->  E4 .. E9 xx xx   (E4-E9 cover U+4000-U+9FFF: Han and the CJK ext. A tail)
# Kana is one search, a regex whose literal first byte the engine scans for: the
# lead byte E3 also starts CJK punctuation (U+3000-303F: 。、「」), so the
# second byte decides. Three `bytes.find`s of two-byte needles cost ~6x more
# (CPython's short-needle search is a byte loop where one-byte finds are memchr).
_KANA: Final = re.compile(rb"\xe3[\x81-\x83]")
_HANGUL: Final = (b"\xeb", b"\xec")
_HAN: Final = (b"\xe4", b"\xe5", b"\xe6", b"\xe7", b"\xe8", b"\xe9")
_CODE_CHARS: Final = ("{", ";", "=")


@dataclass(frozen=True, slots=True)
class ClassifierConfig:
    # Classes that get their own category; any other maps to `fallback`.
    enabled: tuple[str, ...] = BUILTIN_CLASSES
    # Class used for a disabled class, and for empty text.
    fallback: str = PROSE
    # Characters inspected from the start of each text (bounds the cost).
    window: int = 256
    # Code-like characters ({ ; = per char) above which ASCII text is "code".
    code_density: float = 0.02
    # Share of extra UTF-8 bytes (bytes/chars - 1) above which text is "mostly multi-byte".
    multibyte_share: float = 0.5

    def __post_init__(self) -> None:
        from dualpool.errors import ConfigError

        unknown = [c for c in self.enabled if c not in BUILTIN_CLASSES]
        if unknown:
            raise ConfigError(
                "estimator.classes",
                f"unknown content class {unknown[0]!r}; choose from {', '.join(BUILTIN_CLASSES)}",
            )
        if self.fallback not in self.enabled:
            raise ConfigError(
                "estimator.fallback_class",
                f"{self.fallback!r} must be one of the enabled classes {list(self.enabled)}",
            )
        if self.window < 64:
            raise ConfigError("estimator.classifier_window", f"must be >= 64, got {self.window}")


class ContentClassifier:
    """Maps a text to a content class name. Pure and thread-safe (no state after init)."""

    __slots__ = ("_code", "_config", "_ja", "_ko", "_map", "_other", "_prose", "_zh")

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        self._config = config or ClassifierConfig()
        enabled = set(self._config.enabled)
        self._map = {c: (c if c in enabled else self._config.fallback) for c in BUILTIN_CLASSES}
        # Each answer as an attribute: read per request, where `_map[...]` is a lookup.
        self._prose = self._map[PROSE]
        self._code = self._map[CODE]
        self._zh = self._map[ZH]
        self._ja = self._map[JA]
        self._ko = self._map[KO]
        self._other = self._map[OTHER]

    @property
    def config(self) -> ClassifierConfig:
        return self._config

    def classify(self, text: str, utf8_len: int) -> str:
        """Class of `text`; `utf8_len` is its UTF-8 byte length (the caller has it already)."""
        n = len(text)
        if n == 0:
            return self._config.fallback
        cfg = self._config
        w = n if n <= cfg.window else cfg.window
        if utf8_len > n and (utf8_len - n) > cfg.multibyte_share * n:
            # Mostly multi-byte: decide the script. Kana only occurs in Japanese and
            # Hangul only in Korean; Han without either is Chinese.
            # NOTE: `bytes.find`, not `in`: `x in bytes` first tries x as an
            # integer and formats a TypeError for a bytes x (~2k instructions).
            sample = text if n == w else text[:w]
            try:
                raw = sample.encode("utf-8")  # the compiled build's direct call
            except UnicodeEncodeError:  # lone surrogates: count them as they escape
                raw = sample.encode("utf-8", "surrogatepass")
            if _KANA.search(raw) is not None:
                return self._ja
            if raw.find(_HANGUL[0]) >= 0 or raw.find(_HANGUL[1]) >= 0:
                return self._ko
            for lead in _HAN:
                if raw.find(lead) >= 0:
                    return self._zh
            return self._other
        # Code if more than `code_density` of the window's characters are one of
        # { ; = . Their occurrences are found one by one (`str.find` within the
        # window: a C memchr, no copy of the window), stopping as soon as the
        # count passes the limit: the same decision as counting them all
        # (`str.count` is a per-character loop, ~4x a memchr, and code windows
        # pass the limit after a few). Three characters over the first 256
        # separate code from prose about as well as a wider set over the whole
        # text (measured on shared/data/text/prompts.jsonl: median estimate
        # error 7.7% vs 7.5%).
        limit = cfg.code_density * w
        punct = 0
        for ch in _CODE_CHARS:
            i = text.find(ch, 0, w)
            while i >= 0:
                punct += 1
                if punct > limit:
                    return self._code
                i = text.find(ch, i + 1, w)
        return self._prose
