"""Settings of the token-budget estimator, validated where they are made."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dualpool.budget.classes import BUILTIN_CLASSES, ClassifierConfig
from dualpool.errors import ConfigError

__all__ = ["EstimatorConfig"]


@dataclass(frozen=True, slots=True)
class EstimatorConfig:
    # Bytes per token a category starts from, until it has `min_samples` observations.
    prior_bytes_per_token: float = 4.0
    # Per content class overrides of the prior, e.g. {"zh": 3.0}.
    class_priors: Mapping[str, float] = field(default_factory=dict)
    # Decay per observation of the moving statistics: a window of ~1/(1-beta) requests.
    beta: float = 0.98
    # Conservativeness: routing uses c* = c - gamma * sigma (fewer bytes per token, so
    # more estimated tokens), so borderline requests go to the larger pool.
    gamma: float = 0.75
    # Observations a category needs before its learned ratio replaces the prior.
    min_samples: int = 8
    # Sane range of an observed bytes/token ratio; feedback outside it is rejected.
    min_bytes_per_token: float = 0.8
    max_bytes_per_token: float = 16.0
    # Once warmed up, reject a ratio this many sigmas from the mean (poisoned feedback)...
    outlier_sigmas: float = 6.0
    # ...unless this many in a row were rejected: then traffic has changed; follow it.
    outlier_streak_reset: int = 16
    # Categories (model x class) learned separately; beyond it, models share "*".
    max_categories: int = 256
    # Prior of the chat template's fixed tokens per request and per message.
    overhead_per_request: float = 0.0
    overhead_per_message: float = 0.0
    # Ridge strength of that prior, in units of one short request's weight.
    overhead_ridge: float = 0.5
    # Prompt tokens one image / one audio or video part costs.
    image_tokens: int = 576
    audio_tokens: int = 750
    # Output budget of a request that sets no max_tokens, per model ("*" for all).
    default_max_tokens: int = 2048
    model_default_max_tokens: Mapping[str, int] = field(default_factory=dict)
    # When set (e.g. 0.99), a request without a limit gets that quantile of the
    # category's observed completion lengths instead, bounded by the default.
    output_quantile: float | None = None
    # Completions a category needs before its learned output quantile is used.
    output_min_samples: int = 100
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    # The per-request linear model of tokens on the text's shape (bytes, non-ASCII
    # bytes, digits, punctuation, newlines, spaces, space runs, words, capitals, runs
    # of capitals, long letter runs, starts of letter and digit runs, a constant), learned
    # per category next to the ratio, which stays the fallback until then.
    linear: bool = True
    # Its decay per observation: a window of ~1/(1-linear_beta) requests (it has
    # fourteen coefficients to learn where the ratio has one).
    linear_beta: float = 0.995
    # Observations before it is solved, and residuals of it before it is used.
    linear_min_samples: int = 24
    linear_min_residuals: int = 8
    # Re-solve every this many observations (a 14x14 Cholesky each time).
    linear_every: int = 4
    # Ridge toward the single ratio: each shape coefficient shrunk toward 0 by
    # this share of its feature's weighted variance (the bytes coefficient is
    # free). 0.001 and 0.0001 gave the same hard-set trade-off on the tuning
    # seeds 5-7, 0.01 a worse one (docs/estimator.md, 2026-11-30, issue-15-wasted).
    linear_ridge: float = 0.001
    # Conservativeness of its routing estimate, in standard deviations of its
    # own out-of-sample error: prompt + linear_gamma * sd, until the category has
    # learned its own margin (below), or always when linear_quantile is None.
    linear_gamma: float = 0.7
    # When set, the margin is instead learned per category: this quantile of its
    # model's out-of-sample errors in units of their spread, once it has
    # `linear_margin_samples` of them (until then `linear_gamma`). A common
    # quantile sends the same share of each category's borderline requests long,
    # the least-wasted way to spend an unsafe budget across categories. 0.78 by
    # a rule fixed before the evaluation: the lowest level whose mean unsafe
    # rate over the hard sets of tuning seeds 5-7 is <= 0.17% (the 0.2% budget
    # less one seed's binomial noise) with both tokenizers; evaluated on seeds
    # 0-4 (`benchmarks/estimator_seeds.py`, docs/estimator.md). Re-read by the
    # same rule after the ridge changed (0.79 before).
    linear_quantile: float | None = 0.78
    linear_margin_samples: int = 32
    # The router counts a text's shape (a few ns per byte) only when the ratio's
    # estimate, widened by this factor both ways, could reach a pool's threshold:
    # elsewhere the decision is the same either way, and the ratio's estimate stands.
    linear_band: float = 1.5
    # The most UTF-8 bytes one token can stand for, across the tokenizers a
    # backend may use (128 for Llama-3, Qwen2.5 and cl100k: a run of spaces).
    # bytes / max_token_bytes is a true lower bound of prompt tokens: a request
    # is refused without asking a backend only when even that cannot fit.
    max_token_bytes: int = 128

    def __post_init__(self) -> None:
        def positive(name: str, value: float) -> None:
            if not value > 0:
                raise ConfigError(f"estimator.{name}", f"must be > 0, got {value!r}")

        positive("prior_bytes_per_token", self.prior_bytes_per_token)
        for cls, prior in self.class_priors.items():
            if cls not in BUILTIN_CLASSES:
                raise ConfigError(
                    f"estimator.class_priors.{cls}",
                    f"unknown content class; choose from {', '.join(BUILTIN_CLASSES)}",
                )
            positive(f"class_priors.{cls}", prior)
        if not 0.0 < self.beta < 1.0:
            raise ConfigError("estimator.beta", f"must be in (0, 1), got {self.beta!r}")
        if self.gamma < 0:
            raise ConfigError("estimator.gamma", f"must be >= 0, got {self.gamma!r}")
        if self.min_samples < 1:
            raise ConfigError("estimator.min_samples", f"must be >= 1, got {self.min_samples}")
        if not 0 < self.min_bytes_per_token < self.max_bytes_per_token:
            raise ConfigError(
                "estimator.min_bytes_per_token",
                "must be > 0 and below estimator.max_bytes_per_token",
            )
        positive("outlier_sigmas", self.outlier_sigmas)
        if self.max_categories < 1:
            raise ConfigError("estimator.max_categories", "must be >= 1")
        for name in ("overhead_per_request", "overhead_per_message", "overhead_ridge"):
            if getattr(self, name) < 0:
                raise ConfigError(f"estimator.{name}", "must be >= 0")
        for name in ("image_tokens", "audio_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"estimator.{name}", "must be >= 0")
        if self.default_max_tokens < 1:
            raise ConfigError("estimator.default_max_tokens", "must be >= 1")
        for model, value in self.model_default_max_tokens.items():
            if not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"estimator.model_default_max_tokens.{model}", "must be an integer >= 1"
                )
        if not 0.0 < self.linear_beta < 1.0:
            raise ConfigError(
                "estimator.linear_beta", f"must be in (0, 1), got {self.linear_beta!r}"
            )
        if self.linear_quantile is not None and not 0.5 <= self.linear_quantile < 1.0:
            raise ConfigError(
                "estimator.linear_quantile", f"must be in [0.5, 1), got {self.linear_quantile}"
            )
        for name in (
            "linear_min_samples",
            "linear_min_residuals",
            "linear_every",
            "linear_margin_samples",
        ):
            if type(getattr(self, name)) is not int or getattr(self, name) < 1:
                raise ConfigError(f"estimator.{name}", "must be an integer >= 1")
        if not self.linear_band >= 1.0:
            raise ConfigError("estimator.linear_band", f"must be >= 1, got {self.linear_band!r}")
        for name in ("linear_ridge", "linear_gamma"):
            if getattr(self, name) < 0:
                raise ConfigError(f"estimator.{name}", "must be >= 0")
        if type(self.max_token_bytes) is not int or self.max_token_bytes < 1:
            raise ConfigError("estimator.max_token_bytes", "must be an integer >= 1")
        if self.output_quantile is not None and not 0.5 <= self.output_quantile < 1.0:
            raise ConfigError(
                "estimator.output_quantile", f"must be in [0.5, 1), got {self.output_quantile}"
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> EstimatorConfig:
        """Build from a YAML/JSON mapping; unknown keys are an error naming the key."""
        if not isinstance(data, Mapping):
            raise ConfigError("estimator", "must be a mapping")
        known = set(cls.__dataclass_fields__)
        kwargs: dict[str, Any] = {}
        classifier: dict[str, Any] = {}
        for key, value in data.items():
            if key == "classes":
                classifier["enabled"] = tuple(value)
            elif key == "fallback_class":
                classifier["fallback"] = value
            elif key == "classifier_window":
                classifier["window"] = value
            elif key in known and key != "classifier":
                kwargs[key] = value
            else:
                raise ConfigError(f"estimator.{key}", "unknown setting")
        if classifier:
            kwargs["classifier"] = ClassifierConfig(**classifier)
        for key in (
            "beta",
            "gamma",
            "prior_bytes_per_token",
            "output_quantile",
            "linear_beta",
            "linear_ridge",
            "linear_gamma",
            "linear_quantile",
            "linear_band",
        ):
            if (
                key in kwargs
                and kwargs[key] is not None
                and not isinstance(kwargs[key], int | float)
            ):
                raise ConfigError(f"estimator.{key}", f"must be a number, got {kwargs[key]!r}")
        return cls(**kwargs)
