from __future__ import annotations

import pytest

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
