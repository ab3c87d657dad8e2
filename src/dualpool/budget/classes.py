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

__all__ = [
    "BUILTIN_CLASSES",
    "STRUCTURED_CLASS",
    "ClassifierConfig",
    "ContentClassifier",
]

# The built-in classes; a config may enable a subset (disabled ones map to `fallback`).
PROSE = "prose"
CODE = "code"
ZH = "zh"
JA = "ja"
KO = "ko"
OTHER = "other"
# Tool definitions, tool calls and JSON: counted apart from free text.
STRUCTURED_CLASS = "json"
BUILTIN_CLASSES: tuple[str, ...] = (PROSE, CODE, ZH, JA, KO, OTHER, STRUCTURED_CLASS)

_KANA = re.compile("[\u3040-\u30ff\u31f0-\u31ff]")
_HANGUL = re.compile("[\u1100-\u11ff\uac00-\ud7af]")
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


@dataclass(frozen=True, slots=True)
class ClassifierConfig:
    # Classes that get their own category; any other maps to `fallback`.
    enabled: tuple[str, ...] = BUILTIN_CLASSES
    # Class used for a disabled class, and for empty text.
    fallback: str = PROSE
    # Characters inspected from the start of each text (bounds the cost).
    window: int = 256
    # Code-like characters ({ } ; = _ per char) above which ASCII text is "code".
    code_density: float = 0.03
    # Newline density above which punctuation-light text still counts as code.
    code_newline_density: float = 0.03
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

    __slots__ = ("_config", "_map")

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        self._config = config or ClassifierConfig()
        enabled = set(self._config.enabled)
        self._map = {c: (c if c in enabled else self._config.fallback) for c in BUILTIN_CLASSES}

    @property
    def config(self) -> ClassifierConfig:
        return self._config

    def classify(self, text: str, utf8_len: int) -> str:
        """Class of `text`; `utf8_len` is its UTF-8 byte length (the caller has it already)."""
        n = len(text)
        if n == 0:
            return self._config.fallback
        cfg = self._config
        sample = text if n <= cfg.window else text[: cfg.window]
        if utf8_len > n and (utf8_len - n) > cfg.multibyte_share * n:
            # Mostly multi-byte: decide the script. Kana only occurs in Japanese and
            # Hangul only in Korean; Han without either is Chinese.
            if _KANA.search(sample):
                return self._map[JA]
            if _HANGUL.search(sample):
                return self._map[KO]
            if _HAN.search(sample):
                return self._map[ZH]
            return self._map[OTHER]
        m = len(sample)
        # NOTE: each str.count is a C loop over the window; five of them over 256
        # characters cost well under a microsecond, and they separate code from
        # prose about as well as a wider set over the whole text (measured on
        # shared/data/text/prompts.jsonl).
        punct = (
            sample.count("{")
            + sample.count("}")
            + sample.count(";")
            + sample.count("=")
            + sample.count("_")
        )
        if punct > cfg.code_density * m:
            return self._map[CODE]
        if sample.count("\n") > cfg.code_newline_density * m and sample.count("    ") > 0.01 * m:
            return self._map[CODE]
        return self._map[PROSE]
