"""The token budget of a request: prompt estimate plus output budget.

    L_total = ceil(bytes / c*) + overhead + media + output budget

`BudgetEstimator` is the one object the gateway and the simulator both call:
`features()` reads a body, `estimate()` turns features into a `BudgetEstimate`,
`observe()` feeds the backend's `usage` back. It does no I/O and reads no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from dualpool.budget.calibrator import Calibrator, Feedback
from dualpool.budget.classes import STRUCTURED_CLASS, ContentClassifier
from dualpool.budget.config import EstimatorConfig
from dualpool.budget.features import RequestFeatures, extract_features

__all__ = ["BudgetEstimate", "BudgetEstimator", "OutputSource"]


class OutputSource:
    DECLARED: ClassVar[str] = "declared"  # max_completion_tokens or max_tokens
    LEARNED: ClassVar[str] = "learned"  # the category's learned completion quantile
    DEFAULT: ClassVar[str] = "default"  # the configured default


@dataclass(slots=True, init=False)
class BudgetEstimate:
    # Model and content class of the category the estimate was read from.
    model: str
    content_class: str
    # Prompt tokens: conservative (for routing), best guess, and optimistic (for rejection).
    prompt_tokens: int
    prompt_tokens_point: int
    prompt_tokens_low: int
    # Output budget and where it came from (OutputSource).
    output_tokens: int
    output_source: str
    # True when the prompt length is exact (token ids), not estimated.
    exact: bool

    # An explicit __init__ (init=False): mypyc compiles it natively, where the one
    # dataclasses generates stays interpreted (~5x slower per instance).
    def __init__(
        self,
        model: str,
        content_class: str,
        prompt_tokens: int,
        prompt_tokens_point: int,
        prompt_tokens_low: int,
        output_tokens: int,
        output_source: str,
        exact: bool,
    ) -> None:
        self.model = model
        self.content_class = content_class
        self.prompt_tokens = prompt_tokens
        self.prompt_tokens_point = prompt_tokens_point
        self.prompt_tokens_low = prompt_tokens_low
        self.output_tokens = output_tokens
        self.output_source = output_source
        self.exact = exact

    @property
    def category(self) -> str:
        """ "model/class", the label of metrics and logs."""
        return f"{self.model}/{self.content_class}"

    @property
    def total(self) -> int:
        """The routing budget: conservative prompt + output budget."""
        return self.prompt_tokens + self.output_tokens

    @property
    def min_total(self) -> int:
        """The least any backend could be asked to hold: what decides a rejection.

        vLLM rejects prompt + max_tokens > max_model_len only for a declared
        max_tokens; without one it generates until the context is full, so the
        least it needs is the prompt and one output token.
        """
        out = self.output_tokens if self.output_source == OutputSource.DECLARED else 1
        return self.prompt_tokens_low + out


class BudgetEstimator:
    """Features -> estimate -> feedback; pure, thread-safe, O(1) per request."""

    def __init__(self, config: EstimatorConfig | None = None) -> None:
        self.config = config or EstimatorConfig()
        self.classifier = ContentClassifier(self.config.classifier)
        self.calibrator = Calibrator(self.config)
        self._image_tokens = self.config.image_tokens
        self._audio_tokens = self.config.audio_tokens
        self._fallback = self.config.classifier.fallback
        # Read per request: plain attributes (the config is frozen).
        self._model_default_out = dict(self.config.model_default_max_tokens)
        self._default_out = self.config.default_max_tokens
        self._output_quantile = self.config.output_quantile

    def features(self, body: Any, *, chat: bool | None = None) -> RequestFeatures:
        """Read a request body; raises `RequestError` for a malformed one."""
        return extract_features(body, self.classifier, chat=chat)

    def estimate(self, f: RequestFeatures) -> BudgetEstimate:
        cal = self.calibrator
        model, cls = f.model, f.content_class
        if f.max_output_tokens is not None:  # the common case, inline
            output, source = f.max_output_tokens, OutputSource.DECLARED
        else:
            output, source = self._output(f)
        if f.known_prompt_tokens is not None:
            n = f.known_prompt_tokens
            return BudgetEstimate(model, cls, n, n, n, output, source, True)
        own = cal.coefficients(model, cls)
        if f.structured_bytes and cls != STRUCTURED_CLASS:
            other = cal.coefficients(model, STRUCTURED_CLASS)
            own_bytes, other_bytes = f.text_bytes, f.structured_bytes
        elif f.text_bytes and cls == STRUCTURED_CLASS:
            other = cal.coefficients(model, self._fallback)
            own_bytes, other_bytes = f.structured_bytes, f.text_bytes
        else:
            a, m = cal.overhead(model)
            fixed = a + m * f.num_messages
            if f.num_images or f.num_audio:
                fixed += f.num_images * self._image_tokens + f.num_audio * self._audio_tokens
            nbytes = f.text_bytes + f.structured_bytes
            return BudgetEstimate(
                model,
                cls,
                max(1, math.ceil(fixed + nbytes * own.conservative)),
                max(1, round(fixed + nbytes * own.point)),
                max(1, math.floor(fixed + nbytes * own.optimistic)),
                output,
                source,
                False,
            )
        a, m = cal.overhead(model)
        fixed = a + m * f.num_messages
        if f.num_images or f.num_audio:
            fixed += f.num_images * self._image_tokens + f.num_audio * self._audio_tokens
        hi = fixed + own_bytes * own.conservative + other_bytes * other.conservative
        point = fixed + own_bytes * own.point + other_bytes * other.point
        low = fixed + own_bytes * own.optimistic + other_bytes * other.optimistic
        return BudgetEstimate(
            model,
            cls,
            max(1, math.ceil(hi)),
            max(1, round(point)),
            max(1, math.floor(low)),
            output,
            source,
            False,
        )

    def _output(self, f: RequestFeatures) -> tuple[int, str]:
        if f.max_output_tokens is not None:
            return f.max_output_tokens, OutputSource.DECLARED
        default = self._model_default_out.get(f.model, self._default_out)
        if self._output_quantile is not None:
            learned = self.calibrator.output_budget(f.model, f.content_class)
            if learned is not None and learned < default:
                return max(1, learned), OutputSource.LEARNED
        return default, OutputSource.DEFAULT

    def observe(
        self, f: RequestFeatures, prompt_tokens: Any, completion_tokens: Any = None
    ) -> Feedback:
        """Feed back a response's usage.prompt_tokens (and completion_tokens)."""
        return self.calibrator.observe(f, prompt_tokens, completion_tokens)

    def observe_usage(self, f: RequestFeatures, usage: Any) -> Feedback:
        """Feed back an OpenAI `usage` object as the backend returned it (any shape)."""
        if not isinstance(usage, dict):
            return self.calibrator.observe(f, None)
        return self.calibrator.observe(
            f, usage.get("prompt_tokens"), usage.get("completion_tokens")
        )
