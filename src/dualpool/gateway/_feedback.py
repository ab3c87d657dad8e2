"""Usage from an answer, fed back to the router and counted: one step every face shares.

    usage ─► Router.observe (the calibrator) ─► dualpool_calibrator_feedback_total{reason}
                                             └► dualpool_estimate_relative_error

The gateway (`dualpool serve`) and the Envoy external processor (`dualpool
extproc`) both call `record_feedback`, so both learn and report the same way.
"""

from __future__ import annotations

from typing import Any

from dualpool.budget.calibrator import Feedback
from dualpool.gateway._telemetry import GatewayMetrics
from dualpool.router import RoutedRequest, Router

__all__ = ["record_feedback"]


def record_feedback(
    router: Router, metrics: GatewayMetrics, routed: RoutedRequest, usage: dict[str, Any]
) -> Feedback:
    """Feed `usage` back for `routed`; count the calibrator's verdict and the estimate error."""
    fb = router.observe(routed, usage)
    metrics.feedback.labels(fb.reason).inc()
    prompt = usage.get("prompt_tokens")
    if type(prompt) is int and prompt > 0:
        est = routed.estimate.prompt_tokens_point
        metrics.estimate_error.observe(abs(est - prompt) / prompt)
    return fb
