"""The token budget of a request: prompt estimate plus output budget.

    L_total = ceil(bytes / c*) + overhead + media + output budget

or, once the category's linear model of tokens on the text's shape is learned,

    L_total = ceil(p + gamma_lin * sd(p)) + overhead + media + output budget
    p = theta . (bytes, non-ASCII bytes, digits, punctuation, newlines, spaces, runs, words)

The least a request can need, which alone decides a refusal, is a certain bound:
bytes / max_token_bytes (no token stands for more bytes), plus max_tokens only
when the request declares it.

`BudgetEstimator` is the one object the gateway and the simulator both call:
`features()` reads a body, `estimate()` turns features into a `BudgetEstimate`,
`observe()` feeds the backend's `usage` back. It does no I/O and reads no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from dualpool.budget.calibrator import Calibrator, Coefficients, Feedback, linear_tokens
from dualpool.budget.classes import STRUCTURED_CLASS, ContentClassifier
from dualpool.budget.config import EstimatorConfig
from dualpool.budget.features import RequestFeatures, extract_features

__all__ = ["BudgetEstimate", "BudgetEstimator", "OutputSource"]


# Module constants, read per request (a class attribute is a lookup in the
# compiled build, a Final literal is inlined).
_DECLARED: Final = "declared"
_LEARNED: Final = "learned"
_DEFAULT: Final = "default"


class OutputSource:
    DECLARED: ClassVar[str] = _DECLARED  # max_completion_tokens or max_tokens
    LEARNED: ClassVar[str] = _LEARNED  # the category's learned completion quantile
    DEFAULT: ClassVar[str] = _DEFAULT  # the configured default


@dataclass(slots=True, init=False)
class BudgetEstimate:
    # Model and content class of the category the estimate was read from.
    model: str
    content_class: str
    # Prompt tokens: conservative (for routing), best guess, and a certain lower
    # bound (bytes / max_token_bytes; exact for token ids), which decides rejection.
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

        A certain bound, never an estimate: the prompt's lower bound, and vLLM rejects prompt + max_tokens > max_model_len only for a declared
        max_tokens; without one it generates until the context is full, so the
        least it needs is the prompt and one output token.
        """
        out = self.output_tokens if self.output_source == _DECLARED else 1
        return self.prompt_tokens_low + out


def _round(x: float) -> int:
    """`round(x)` for a float (halves to even), without the builtin's call.

    `x - floor(x)` is exact for a float, so the comparisons with 0.5 are.
    """
    r = math.floor(x)
    d = x - r
    if d > 0.5 or (d == 0.5 and r % 2 == 1):
        r += 1
    return r


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
        self._max_token_bytes = self.config.max_token_bytes
        self._band = self.config.linear_band

    def features(self, body: Any, *, chat: bool | None = None) -> RequestFeatures:
        """Read a request body; raises `RequestError` for a malformed one."""
        return extract_features(body, self.classifier, chat=chat)

    def estimate(
        self, f: RequestFeatures, near: tuple[int, ...] | None = None, precise: bool = False
    ) -> BudgetEstimate:
        """The budget of `f`.

        The category's linear model is used when its shape is counted already,
        when `precise`, or when the ratio's estimate widened by `linear_band`
        could reach one of the thresholds `near` (the router's): then the
        shape is counted here.
        """
        cal = self.calibrator
        model, cls = f.model, f.content_class
        if f.max_output_tokens is not None:  # the common case, inline
            output, source = f.max_output_tokens, _DECLARED
        else:
            output, source = self._output(f)
        if f.known_prompt_tokens is not None:
            n = f.known_prompt_tokens
            return BudgetEstimate(model, cls, n, n, n, output, source, True)
        own = cal.coefficients(model, cls)
        low = max(1, -(-(f.text_bytes + f.structured_bytes) // self._max_token_bytes))
        if f.structured_bytes and cls != STRUCTURED_CLASS:
            other = cal.coefficients(model, STRUCTURED_CLASS)
            own_bytes, other_bytes = f.text_bytes, f.structured_bytes
        elif f.text_bytes and cls == STRUCTURED_CLASS:
            other = cal.coefficients(model, self._fallback)
            own_bytes, other_bytes = f.structured_bytes, f.text_bytes
        else:
            other = own
            own_bytes, other_bytes = f.text_bytes + f.structured_bytes, 0
        a, m = cal.overhead(model)
        fixed = a + m * f.num_messages
        if f.num_images or f.num_audio:
            fixed += f.num_images * self._image_tokens + f.num_audio * self._audio_tokens
        theta = own.theta
        if (
            theta is not None
            and cls != STRUCTURED_CLASS
            and (
                f.shaped
                or precise
                or (near is not None and self._near(f, own, fixed, output, near))
            )
            and f.count_shape()
        ):
            # The linear model, on the free text (own bytes are the text bytes here).
            p = linear_tokens(theta, f, own.point)
            sd = math.sqrt(own.lin_v * p + own.lin_rho2 * p * p)
            hi = fixed + p + own.lin_gamma * sd + other_bytes * other.conservative
            point = fixed + p + other_bytes * other.point
        else:
            hi = fixed + own_bytes * own.conservative + other_bytes * other.conservative
            point = fixed + own_bytes * own.point + other_bytes * other.point
        return BudgetEstimate(
            model,
            cls,
            max(1, math.ceil(hi)),
            max(1, _round(point)),
            low,
            output,
            source,
            False,
        )

    def _near(
        self, f: RequestFeatures, own: Coefficients, fixed: float, out: int, near: tuple[int, ...]
    ) -> bool:
        """Could the budget be on either side of a threshold, by the ratio's estimate?"""
        b = f.text_bytes
        rest = fixed + f.structured_bytes * own.point + out
        lo = rest + b * own.point / self._band
        hi = rest + b * own.conservative * self._band
        for t in near:  # noqa: SIM110 (a plain loop compiles to C; any() of a generator does not)
            if lo <= t <= hi:
                return True
        return False

    def _output(self, f: RequestFeatures) -> tuple[int, str]:
        if f.max_output_tokens is not None:
            return f.max_output_tokens, _DECLARED
        default = self._model_default_out.get(f.model, self._default_out)
        if self._output_quantile is not None:
            learned = self.calibrator.output_budget(f.model, f.content_class)
            if learned is not None and learned < default:
                return max(1, learned), _LEARNED
        return default, _DEFAULT

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
