from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpool.budget import ClassifierConfig, ContentClassifier, utf8_len
from dualpool.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "cls"),
    [
        ("The quick brown fox jumps over the lazy dog. " * 5, "prose"),
        ("def f(x):\n    return {k: v for k, v in x.items()};\nx_y = f(z_w)\n" * 5, "code"),
        ("这是一个关于大型语言模型推理服务的测试句子。" * 5, "zh"),
        ("これは大規模言語モデルの推論サービスについてのテストです。" * 5, "ja"),
        ("이것은 대규모 언어 모델 추론 서비스에 대한 테스트 문장입니다." * 5, "ko"),
        ("Это тестовое предложение о сервисе вывода больших языковых моделей." * 5, "other"),
        ("", "prose"),
    ],
)
def test_builtin_classes(text: str, cls: str) -> None:
    assert ContentClassifier().classify(text, utf8_len(text)) == cls


def test_disabled_class_falls_back() -> None:
    c = ContentClassifier(ClassifierConfig(enabled=("prose", "code", "json")))
    text = "这是一个测试句子。" * 5
    assert c.classify(text, utf8_len(text)) == "prose"


def test_unknown_class_is_a_config_error_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"estimator\.classes"):
        ClassifierConfig(enabled=("prose", "klingon"))


def _naive_class(c: ContentClassifier, text: str) -> str:
    """The classification rule, written plainly (one pass over characters)."""
    cfg = c.config
    if not text:
        return cfg.fallback
    sample = text[: cfg.window]
    nbytes = len(text.encode("utf-8", "surrogatepass"))
    if nbytes - len(text) > cfg.multibyte_share * len(text):
        points = [ord(ch) for ch in sample]
        if any(0x3040 <= p <= 0x30FF for p in points):
            return "ja"
        if any(0xB000 <= p <= 0xCFFF for p in points):
            return "ko"
        if any(0x4E00 <= p <= 0x9FFF for p in points):
            return "zh"
        return "other"
    punct = sum(1 for ch in sample if ch in "{;=")
    return "code" if punct > cfg.code_density * len(sample) else "prose"


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "a",
                "b ",
                "{",
                ";",
                "=",
                "x = 1;",
                "\n",
                "é",
                "中",
                "文",
                "の",
                "。",  # E3 80 82: kana's lead byte E3, not kana
                "ー",  # U+30FC, the last kana block: E3 83 BC
                "ぁ",  # U+3041: E3 81 81
                "ㄅ",  # U+3105: E3 84 85, not kana
                "丁",
                "한",
                "ж",
                "\ud800",
                "😀",
            ]
        ),
        max_size=400,
    ).map("".join)
)
def test_classify_equals_a_naive_reference(text: str) -> None:
    # The fast path (code characters found one by one up to the limit, kana by
    # a regex on the encoded window, other lead bytes with bytes.find) decides
    # exactly what the plain rule does, on any text.
    c = ContentClassifier()
    assert c.classify(text, utf8_len(text)) == _naive_class(c, text)
