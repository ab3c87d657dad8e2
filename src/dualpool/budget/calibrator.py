"""Online calibration of bytes per token, learned from the backend's own `usage`.

For each category (model x content class) the calibrator keeps mergeable,
exponentially weighted statistics of the observed ratio

    c_obs = content bytes / (usage.prompt_tokens - overhead - other parts)

and publishes three per-category multipliers (tokens per byte) that the
estimate reads without a lock:

    conservative  1 / c*        c* = c - gamma * sigma   (routing: over-estimates)
    point         1 / c                                  (the best guess)
    optimistic    1 / (c + gamma * sigma)                (rejection: under-estimates)

Per category it also learns a linear model of tokens on the text's shape
(`LinearStats`); once it has enough samples and out-of-sample residuals, the
published `Coefficients` carry it and the estimate reads it instead of the ratio
(`linear_tokens` is the one implementation of that prediction).

Per model it also fits the tokens the chat template adds, `a + m * messages`, so
short prompts are not under-estimated (see `OverheadStats`).

Updates are O(1) and serialised by one lock (they never await, so the lock is
safe under asyncio too); reads take no lock, because each update replaces an
immutable tuple in one assignment.
"""

from __future__ import annotations

import math
import threading
from typing import Any, ClassVar, Final

from dualpool.budget.classes import STRUCTURED_CLASS
from dualpool.budget.config import EstimatorConfig
from dualpool.budget.features import SHAPE_FEATURES, RequestFeatures
from dualpool.budget.stats import LinearStats, OverheadStats, QuantileSketch, RatioStats

__all__ = ["DEFAULT_MODEL", "Calibrator", "Feedback", "FeedbackReason", "linear_tokens"]

# Coefficients of the linear model: text bytes, the shape counts, a constant.
LINEAR_K = 2 + len(SHAPE_FEATURES)

# Category model shared by every model once `max_categories` is reached.
DEFAULT_MODEL: Final = "*"
# Version 4: the linear model has 14 coefficients (starts of letter runs and of
# digit runs added; version 3 added runs of >= 10 letters and the learned margin,
# version 2 uppercase letters and runs of capitals). Snapshots of versions 1-3
# are still read, without their linear part (9, 11 and 12 coefficients: it
# cannot be carried over; the model relearns it).
SNAPSHOT_VERSION = 4
_READABLE_VERSIONS = (1, 2, 3, SNAPSHOT_VERSION)


class FeedbackReason:
    """Why one piece of feedback was used or rejected (metric label values)."""

    # ClassVar: class constants, also when compiled with mypyc (make compile).
    ACCEPTED: ClassVar[str] = "accepted"
    EXACT: ClassVar[str] = "exact"  # prompt given as token ids: nothing to learn
    OVERHEAD_ONLY: ClassVar[str] = "overhead_only"  # too little content to learn a ratio
    NONPOSITIVE: ClassVar[str] = "nonpositive_tokens"
    IMPLAUSIBLE: ClassVar[str] = "implausible_ratio"
    OUTLIER: ClassVar[str] = "outlier"
    ALL: ClassVar[tuple[str, ...]] = (
        ACCEPTED,
        EXACT,
        OVERHEAD_ONLY,
        NONPOSITIVE,
        IMPLAUSIBLE,
        OUTLIER,
    )
    REJECTED: ClassVar[frozenset[str]] = frozenset({NONPOSITIVE, IMPLAUSIBLE, OUTLIER})


# NOTE: plain slots classes, not frozen dataclasses: one of each is made per
# request, and a frozen dataclass pays object.__setattr__ for every field.
class Feedback:
    """What became of one piece of feedback (treat as immutable)."""

    __slots__ = ("accepted", "cls", "model", "observed_ratio", "reason")

    def __init__(
        self,
        accepted: bool,
        reason: str,
        model: str,
        cls: str,
        observed_ratio: float | None = None,
    ) -> None:
        self.accepted = accepted
        self.reason = reason
        self.model = model
        self.cls = cls
        # Observed bytes per token of the content, when computed.
        self.observed_ratio = observed_ratio

    @property
    def category(self) -> str:
        """ "model/class" the feedback was filed under."""
        return f"{self.model}/{self.cls}"

    def __repr__(self) -> str:
        return f"Feedback({self.accepted}, {self.reason!r}, {self.category!r})"


class Coefficients:
    """What an estimate reads for one category: tokens per byte, three ways."""

    __slots__ = (
        "conservative",
        "learned",
        "lin_gamma",
        "lin_rho2",
        "lin_v",
        "optimistic",
        "point",
        "theta",
    )

    def __init__(
        self,
        conservative: float,
        point: float,
        optimistic: float,
        learned: bool,
        theta: list[float] | None = None,
        lin_v: float = 0.0,
        lin_rho2: float = 0.0,
        lin_gamma: float = 0.0,
    ) -> None:
        self.conservative = conservative
        self.point = point
        self.optimistic = optimistic
        self.learned = learned
        # The linear model, when published: coefficients (LINEAR_K) and the spread
        # of its error, variance = lin_v * tokens + lin_rho2 * tokens^2.
        self.theta = theta
        self.lin_v = lin_v
        self.lin_rho2 = lin_rho2
        # Its routing margin, in those standard deviations.
        self.lin_gamma = lin_gamma

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Coefficients) and (
            self.conservative,
            self.point,
            self.optimistic,
            self.learned,
            self.theta,
            self.lin_v,
            self.lin_rho2,
            self.lin_gamma,
        ) == (
            other.conservative,
            other.point,
            other.optimistic,
            other.learned,
            other.theta,
            other.lin_v,
            other.lin_rho2,
            other.lin_gamma,
        )

    __hash__ = None  # type: ignore[assignment]


def linear_tokens(theta: list[float], f: RequestFeatures, point: float) -> float:
    """Tokens of `f`'s free text by the linear model, within bounds of the ratio's.

    `point` is the category's tokens per byte by the ratio. The prediction is
    held within [1/2, 2] x the ratio's: a model poisoned or extrapolated beyond
    its data cannot move an estimate further than that.
    """
    b = f.text_bytes
    t = (
        theta[0] * b
        + theta[1] * f.nonascii
        + theta[2] * f.digits
        + theta[3] * f.punct
        + theta[4] * f.newlines
        + theta[5] * f.spaces
        + theta[6] * f.space_runs
        + theta[7] * f.words
        + theta[8] * f.upper
        + theta[9] * f.caps_runs
        + theta[10] * f.long_runs
        + theta[11] * f.letter_runs
        + theta[12] * f.digit_runs
        + theta[13]
    )
    ref = b * point
    if t < 0.5 * ref:
        return 0.5 * ref
    if t > 2.0 * ref:
        return 2.0 * ref
    return t


class _Category:
    __slots__ = (
        "c",
        "linear",
        "margin",
        "output_q",
        "outputs",
        "ratio",
        "rel_sigma",
        "rho2",
        "sigma",
        "streak",
        "theta",
        "v",
    )

    def __init__(self) -> None:
        self.ratio = RatioStats()
        self.linear = LinearStats(LINEAR_K)
        # The solved linear model (None before) and its error spread.
        self.theta: list[float] | None = None
        self.v = 0.0
        self.rho2 = 0.0
        self.margin = -1.0  # learned margin in sds; < 0 until it has enough errors
        self.outputs = QuantileSketch()
        self.output_q = 0  # cached quantile of `outputs`
        self.streak = 0  # consecutive outliers
        # Cached from `ratio` once warmed up (0.0 before): c, sigma, sigma / c.
        self.c = 0.0
        self.sigma = 0.0
        self.rel_sigma = 0.15


_KNOB_FIELDS: tuple[str, ...] = (
    "audio_tokens",
    "beta",
    "gamma",
    "image_tokens",
    "linear",
    "linear_beta",
    "linear_every",
    "linear_gamma",
    "linear_margin_samples",
    "linear_min_residuals",
    "linear_min_samples",
    "linear_quantile",
    "linear_ridge",
    "max_bytes_per_token",
    "max_categories",
    "min_bytes_per_token",
    "min_samples",
    "outlier_sigmas",
    "outlier_streak_reset",
    "output_min_samples",
    "output_quantile",
    "overhead_per_message",
    "overhead_per_request",
    "overhead_ridge",
    "prior_bytes_per_token",
)


class _Knobs:
    """The config values read on every feedback, as plain attributes.

    This is the one place that serves mypyc: EstimatorConfig is a frozen
    dataclass that stays interpreted (it is pickled), so compiled code reading
    its attributes pays a generic lookup each time, and `observe` reads some
    twenty per call. The attributes are the config's own fields of the same
    names, copied by `__init__` in one loop over `_KNOB_FIELDS` (tests pin the
    list to the annotations and to the config's fields); a field the hot path
    needs is added to both.
    """

    audio_tokens: int
    beta: float
    gamma: float
    image_tokens: int
    linear: bool
    linear_beta: float
    linear_every: int
    linear_gamma: float
    linear_margin_samples: int
    linear_min_residuals: int
    linear_min_samples: int
    linear_quantile: float | None
    linear_ridge: float
    max_bytes_per_token: float
    max_categories: int
    min_bytes_per_token: float
    min_samples: int
    outlier_sigmas: float
    outlier_streak_reset: int
    output_min_samples: int
    output_quantile: float | None
    overhead_per_message: float
    overhead_per_request: float
    overhead_ridge: float
    prior_bytes_per_token: float

    def __init__(self, c: EstimatorConfig) -> None:
        for name in _KNOB_FIELDS:
            setattr(self, name, getattr(c, name))
        # Not plain fields: derived from nested config.
        self.class_priors: dict[str, float] = dict(c.class_priors)
        self.fallback: str = c.classifier.fallback

    def prior_for(self, cls: str) -> float:
        return self.class_priors.get(cls, self.prior_bytes_per_token)


class Calibrator:
    """Per-category bytes-per-token ratios and per-model template overhead."""

    def __init__(self, config: EstimatorConfig | None = None) -> None:
        self.config = config or EstimatorConfig()
        self._knobs = _Knobs(self.config)
        self._lock = threading.Lock()
        self._cats: dict[str, dict[str, _Category]] = {}
        self._overhead: dict[str, OverheadStats] = {}
        self._num_categories = 0
        # Published, read without the lock: model -> class -> Coefficients.
        self._coef: dict[str, dict[str, Coefficients]] = {}
        self._ovh: dict[str, tuple[float, float]] = {}
        self._default_ovh = (self.config.overhead_per_request, self.config.overhead_per_message)
        self._prior_coef: dict[str, Coefficients] = {}
        self.counters: dict[str, int] = dict.fromkeys(FeedbackReason.ALL, 0)

    # ---- reads (hot path, no lock) -------------------------------------------------
    def coefficients(self, model: str, cls: str) -> Coefficients:
        per_model = self._coef.get(model)
        if per_model is None:
            per_model = self._coef.get(DEFAULT_MODEL)
        if per_model is not None:
            coef = per_model.get(cls)
            if coef is not None:
                return coef
        return self._prior(cls)

    def overhead(self, model: str) -> tuple[float, float]:
        ovh = self._ovh.get(model)
        if ovh is None:
            ovh = self._ovh.get(DEFAULT_MODEL, self._default_ovh)
        return ovh

    def _prior(self, cls: str) -> Coefficients:
        coef = self._prior_coef.get(cls)
        if coef is None:
            inv = 1.0 / self._knobs.prior_for(cls)
            coef = Coefficients(inv, inv, inv, learned=False)
            self._prior_coef[cls] = coef
        return coef

    def output_budget(self, model: str, cls: str) -> int | None:
        """Learned output quantile for requests without a limit, or None."""
        per_model = self._cats.get(model) or self._cats.get(DEFAULT_MODEL)
        if per_model is None:
            return None
        cat = per_model.get(cls)
        if cat is None or cat.outputs.n < self._knobs.output_min_samples:
            return None
        return cat.output_q

    # ---- feedback (O(1), under the lock) ---------------------------------------------
    def observe(
        self,
        features: RequestFeatures,
        prompt_tokens: Any,
        completion_tokens: Any = None,
    ) -> Feedback:
        """Learn from one response's `usage`. Never raises on bad feedback: it is counted."""
        cls = features.content_class
        with self._lock:
            # _resolve and _category, inline (this runs once per simulated request).
            model = features.model
            per_model = self._cats.get(model)
            if per_model is None and self._num_categories >= self._knobs.max_categories:
                model = DEFAULT_MODEL
                per_model = self._cats.get(model)
            if type(prompt_tokens) is not int or prompt_tokens <= 0:
                return self._count(Feedback(False, FeedbackReason.NONPOSITIVE, model, cls))
            cat = per_model.get(cls) if per_model is not None else None
            if cat is None:
                cat = self._category(model, cls)
            if (
                completion_tokens is not None
                and type(completion_tokens) is int
                and completion_tokens >= 0
                and features.max_output_tokens is None
                and self._knobs.output_quantile is not None
            ):
                self._observe_output(cat, completion_tokens)
            if features.known_prompt_tokens is not None:
                return self._count(Feedback(True, FeedbackReason.EXACT, model, cls))
            fb = self._observe_prompt(model, cls, cat, features, prompt_tokens)
            self.counters[fb.reason] += 1
            return fb

    def _observe_output(self, cat: _Category, completion_tokens: int) -> None:
        cat.outputs.add(completion_tokens, self._knobs.beta)
        # Re-reading the quantile walks the buckets: do it every 16 updates, not each.
        if cat.outputs.n % 16 == 0 or cat.outputs.n == self._knobs.output_min_samples:
            assert self._knobs.output_quantile is not None
            cat.output_q = cat.outputs.quantile(self._knobs.output_quantile)

    def _observe_prompt(
        self, model: str, cls: str, cat: _Category, f: RequestFeatures, prompt_tokens: int
    ) -> Feedback:
        cfg = self._knobs
        a, m = self._ovh.get(model) or self.overhead(model)
        media = (
            f.num_images * cfg.image_tokens + f.num_audio * cfg.audio_tokens
            if (f.num_images or f.num_audio)
            else 0
        )
        if cls == STRUCTURED_CLASS:
            own_bytes = f.structured_bytes
            other_bytes = f.text_bytes
            other = other_bytes * self.coefficients(model, cfg.fallback).point
        else:
            own_bytes = f.text_bytes
            other_bytes = f.structured_bytes
            other = (
                other_bytes * self.coefficients(model, STRUCTURED_CLASS).point
                if other_bytes
                else 0.0
            )
        fixed = a + m * f.num_messages + media + other
        # A token is at least one byte (special tokens aside): far more tokens than
        # bytes plus the template means the backend's count is not of this prompt.
        if prompt_tokens > own_bytes + other_bytes + fixed + 64 + 4 * f.num_messages:
            return Feedback(False, FeedbackReason.IMPLAUSIBLE, model, cls)
        own_tokens = prompt_tokens - fixed
        observed: float | None = None
        warm = cat.c > 0.0
        if own_bytes >= 32 and own_tokens >= 4.0 and own_tokens >= 0.5 * prompt_tokens:
            observed = own_bytes / own_tokens
            if not cfg.min_bytes_per_token <= observed <= cfg.max_bytes_per_token:
                return Feedback(False, FeedbackReason.IMPLAUSIBLE, model, cls, observed)
            if warm:
                c = cat.c
                spread = cat.sigma if cat.sigma > 0.05 * c else 0.05 * c
                if abs(observed - c) > cfg.outlier_sigmas * spread:
                    cat.streak += 1
                    if cat.streak < cfg.outlier_streak_reset:
                        return Feedback(False, FeedbackReason.OUTLIER, model, cls, observed)
            cat.streak = 0
            cat.ratio.add(own_bytes, own_tokens, cfg.beta)
            if cfg.linear and cls != STRUCTURED_CLASS and f.count_shape():
                self._observe_linear(cat, f, own_tokens)
            self._publish(model, cls, cat)
        # The template overhead: what the content estimate does not explain. The
        # residual's noise grows with the content (sigma_rel * content tokens), so
        # each residual is weighted by the inverse of that variance: short prompts,
        # where the overhead matters, teach it; long ones barely move it.
        point = 1.0 / cat.c if cat.c > 0.0 else 1.0 / cfg.prior_for(cls)
        theta = cat.theta
        if theta is not None and f.shaped and cls != STRUCTURED_CLASS:
            content = linear_tokens(theta, f, point) + other
        else:
            content = own_bytes * point + other
        residual = prompt_tokens - content - media
        x = cat.rel_sigma * content
        ovh = self._overhead.get(model)
        if ovh is None:
            ovh = self._overhead[model] = OverheadStats()
        ovh.add(float(f.num_messages), residual, 1.0 / (1.0 + x * x), cfg.beta)
        self._ovh[model] = ovh.solve(
            cfg.overhead_per_request, cfg.overhead_per_message, cfg.overhead_ridge
        )
        if observed is None:
            return Feedback(True, FeedbackReason.OVERHEAD_ONLY, model, cls)
        return Feedback(True, FeedbackReason.ACCEPTED, model, cls, observed)

    def _observe_linear(self, cat: _Category, f: RequestFeatures, own_tokens: float) -> None:
        """Learn one text's tokens on its shape; re-solve every `linear_every`."""
        cfg = self._knobs
        beta = cfg.linear_beta
        lin = cat.linear
        theta = cat.theta
        point = 1.0 / cat.c if cat.c > 0.0 else 1.0 / cfg.prior_for(f.content_class)
        if theta is not None:  # its error, before it learns this request
            p = linear_tokens(theta, f, point)
            lin.add_residual(p, own_tokens, beta)
            var = cat.v * p + cat.rho2 * p * p
            if var > 0.0 and cfg.linear_quantile is not None:
                lin.add_standardized((own_tokens - p) / math.sqrt(var), beta)
        inv = 1.0 / f.text_bytes
        z = f.shape_vector()
        for i in range(LINEAR_K):
            z[i] *= inv
        lin.add(z, own_tokens * inv, beta)
        if lin.n >= cfg.linear_min_samples and (theta is None or lin.n % cfg.linear_every == 0):
            self._solve_linear(cat, point)

    def _solve_linear(self, cat: _Category, point: float) -> None:
        lin = cat.linear
        solved = lin.solve(point, self._knobs.linear_ridge)
        if solved is not None:
            cat.theta = solved
        cfg = self._knobs
        if lin.en >= cfg.linear_min_residuals:
            cat.v, cat.rho2 = lin.spread()
        if cfg.linear_quantile is not None and lin.zn >= cfg.linear_margin_samples:
            cat.margin = lin.margin(cfg.linear_quantile)

    def _publish(self, model: str, cls: str, cat: _Category) -> None:
        """Publish a category's coefficients once its ratio has `min_samples`."""
        stats = cat.ratio
        cfg = self._knobs
        if stats.n < cfg.min_samples:
            return
        c = stats.ratio()
        sigma = stats.sigma()
        cat.c, cat.sigma, cat.rel_sigma = c, sigma, sigma / c
        lo = max(cfg.min_bytes_per_token, c - cfg.gamma * sigma)
        hi = c + cfg.gamma * sigma
        coefs = self._coef.get(model)
        if coefs is None:
            coefs = self._coef[model] = {}
        theta = cat.theta if cat.linear.en >= cfg.linear_min_residuals else None
        margin = cat.margin if cat.margin >= 0.0 else cfg.linear_gamma
        coefs[cls] = Coefficients(1.0 / lo, 1.0 / c, 1.0 / hi, True, theta, cat.v, cat.rho2, margin)

    def _count(self, fb: Feedback) -> Feedback:
        self.counters[fb.reason] += 1
        return fb

    def _resolve(self, model: str) -> str:
        if model in self._cats:
            return model
        return model if self._num_categories < self._knobs.max_categories else DEFAULT_MODEL

    def _category(self, model: str, cls: str) -> _Category:
        per_model = self._cats.get(model)
        if per_model is None:
            per_model = self._cats[model] = {}
        cat = per_model.get(cls)
        if cat is None:
            cat = per_model[cls] = _Category()
            if model != DEFAULT_MODEL:
                self._num_categories += 1
        return cat

    # ---- persistence and sharing --------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything learned, as a JSON-serialisable dict (see `restore`, `merge`)."""
        with self._lock:
            return {
                "version": SNAPSHOT_VERSION,
                "categories": {
                    model: {
                        cls: {
                            "ratio": cat.ratio.to_dict(),
                            "outputs": cat.outputs.to_dict(),
                            "linear": cat.linear.to_dict(),
                        }
                        for cls, cat in per_model.items()
                    }
                    for model, per_model in self._cats.items()
                },
                "overhead": {model: o.to_dict() for model, o in self._overhead.items()},
                "counters": dict(self.counters),
            }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Replace what was learned with a snapshot's content."""
        with self._lock:
            self._cats.clear()
            self._overhead.clear()
            self._coef = {}
            self._ovh = {}
            self._num_categories = 0
            self.counters = dict.fromkeys(FeedbackReason.ALL, 0)
        self.merge(snapshot)

    def merge(self, snapshot: dict[str, Any]) -> None:
        """Add another replica's statistics to ours (sums add; counters add)."""
        from dualpool.errors import ConfigError

        version = snapshot.get("version") if isinstance(snapshot, dict) else None
        if version not in _READABLE_VERSIONS:
            raise ConfigError(
                "calibrator snapshot",
                f"expected a dict with version {SNAPSHOT_VERSION}; was it written by dualpool?",
            )
        try:
            with self._lock:
                for model, per_model in snapshot["categories"].items():
                    for cls, data in per_model.items():
                        cat = self._category(model, cls)
                        cat.ratio.merge(RatioStats.from_dict(data["ratio"]))
                        cat.outputs.merge(QuantileSketch.from_dict(data["outputs"]))
                        if "linear" in data and version == SNAPSHOT_VERSION:
                            cat.linear.merge(LinearStats.from_dict(data["linear"]))
                            if cat.linear.n >= self._knobs.linear_min_samples:
                                c = cat.ratio.ratio()
                                self._solve_linear(
                                    cat, 1.0 / c if c > 0.0 else 1.0 / self._knobs.prior_for(cls)
                                )
                        if self._knobs.output_quantile is not None:
                            cat.output_q = cat.outputs.quantile(self._knobs.output_quantile)
                        self._publish(model, cls, cat)
                cfg = self._knobs
                for model, data in snapshot["overhead"].items():
                    ovh = self._overhead.setdefault(model, OverheadStats())
                    ovh.merge(OverheadStats.from_dict(data))
                    self._ovh[model] = ovh.solve(
                        cfg.overhead_per_request, cfg.overhead_per_message, cfg.overhead_ridge
                    )
                for key, value in snapshot.get("counters", {}).items():
                    if key in self.counters:
                        self.counters[key] += int(value)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError("calibrator snapshot", f"malformed: {exc!r}") from None

    def categories(self) -> list[dict[str, Any]]:
        """A per-category view for the admin endpoint and metrics."""
        out: list[dict[str, Any]] = []
        with self._lock:
            for model, per_model in sorted(self._cats.items()):
                a, m = self.overhead(model)
                for cls, cat in sorted(per_model.items()):
                    coef = self.coefficients(model, cls)
                    sigma = cat.ratio.sigma()
                    out.append(
                        {
                            "category": f"{model}/{cls}",
                            "model": model,
                            "class": cls,
                            "samples": cat.ratio.n,
                            "learned": coef.learned,
                            "bytes_per_token": 1.0 / coef.point,
                            "bytes_per_token_conservative": 1.0 / coef.conservative,
                            "sigma": None if math.isnan(sigma) else sigma,
                            "overhead_per_request": a,
                            "overhead_per_message": m,
                            "output_samples": cat.outputs.n,
                            "output_quantile_tokens": cat.output_q or None,
                        }
                    )
        return out
