"""Estimator + pool policy: the routing step the gateway and the simulator share.

    body ─► features ─► estimate ─► policy.route ─► RoutedRequest
                                                      │ (the caller does the I/O)
    usage ◄───────────────────────────────────────────┘ ─► observe ─► calibrator

Pure: no I/O, no clock. The caller passes saturation in and feeds usage back.
With `adaptive`, the router also owns the short pool's `ThresholdController`:
each routed budget feeds its recent distribution, and the caller's `adapt(now,
short, long)` passes the pools' load signals in (the gateway after each metrics
scrape, the simulator at arrivals).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dualpool.budget import BudgetEstimate, BudgetEstimator, EstimatorConfig, RequestFeatures
from dualpool.budget.calibrator import Feedback
from dualpool.policy import Decision, PoolPolicy, PoolSpec
from dualpool.policy.adaptive import AdaptiveConfig, PoolSignal, ThresholdController

__all__ = ["RoutedRequest", "Router"]


@dataclass(slots=True, init=False)
class RoutedRequest:
    features: RequestFeatures
    estimate: BudgetEstimate
    decision: Decision

    # An explicit __init__ (init=False): mypyc compiles it natively, where the one
    # dataclasses generates stays interpreted (~5x slower per instance).
    def __init__(
        self, features: RequestFeatures, estimate: BudgetEstimate, decision: Decision
    ) -> None:
        self.features = features
        self.estimate = estimate
        self.decision = decision


class Router:
    """Routes OpenAI request bodies to pools by their estimated token budget."""

    __slots__ = ("controller", "estimator", "policy")

    def __init__(
        self,
        pools: Sequence[PoolSpec] | PoolPolicy,
        estimator: BudgetEstimator | EstimatorConfig | None = None,
        adaptive: AdaptiveConfig | None = None,
    ) -> None:
        self.policy = pools if isinstance(pools, PoolPolicy) else PoolPolicy(pools)
        if isinstance(estimator, BudgetEstimator):
            self.estimator = estimator
        else:
            self.estimator = BudgetEstimator(estimator)
        # The adaptive threshold of the smallest pool (None: static; one pool: none).
        self.controller: ThresholdController | None = None
        if adaptive is not None and len(self.policy.pools) > 1:
            self.controller = ThresholdController(
                adaptive, self.policy.threshold(0), self.policy.pools[0].max_model_len
            )

    def adapt(self, now: float, short: PoolSignal | None, long: PoolSignal | None) -> int:
        """One controller update from the two smallest pools' load; the threshold after."""
        ctl = self.controller
        if ctl is None:
            return self.policy.threshold(0)
        before = ctl.threshold
        t = ctl.update(now, short, long)
        if t != before:
            self.policy.set_threshold(0, t)
        return t

    def route(
        self,
        body: Any,
        *,
        saturated: Sequence[bool] | None = None,
        chat: bool | None = None,
        precise: bool = False,
    ) -> RoutedRequest:
        """Raises `RequestError` for a malformed body (the gateway answers 400).

        The per-request linear model is read when the decision could depend on
        it (the budget near a threshold), or always with `precise`.
        """
        f = self.estimator.features(body, chat=chat)
        est = self.estimator.estimate(f, self.policy.thresholds, precise)
        if self.controller is not None:
            self.controller.observe_budget(est.total)
        return RoutedRequest(
            f,
            est,
            self.policy.route(
                est.total,
                min_budget=est.min_total,
                saturated=saturated,
                prompt_tokens=est.prompt_tokens_low,
                output_tokens=est.output_tokens,
            ),
        )

    def route_features(
        self, f: RequestFeatures, *, saturated: Sequence[bool] | None = None
    ) -> RoutedRequest:
        est = self.estimator.estimate(f, self.policy.thresholds)
        if self.controller is not None:
            self.controller.observe_budget(est.total)
        decision = self.policy.route(
            est.total,
            min_budget=est.min_total,
            saturated=saturated,
            prompt_tokens=est.prompt_tokens_low,
            output_tokens=est.output_tokens,
        )
        return RoutedRequest(f, est, decision)

    def observe(self, routed: RoutedRequest, usage: Any) -> Feedback:
        """Feed back the backend's `usage` object for a routed request."""
        return self.estimator.observe_usage(routed.features, usage)
