"""Which pool serves a request: pure, O(pools), no I/O.

The pool policy sees a token budget and, optionally, which pools the caller
considers saturated; it returns a `Decision` with a reason code. It never reads
a clock, a socket or a metric itself. `ThresholdController` moves the short
pool's threshold from load signals the caller passes in (docs/adaptive.md).
"""

from dualpool.policy.adaptive import AdaptiveConfig, PoolSignal, ThresholdController
from dualpool.policy.pools import Decision, PoolPolicy, PoolSpec, Reason

__all__ = [
    "AdaptiveConfig",
    "Decision",
    "PoolPolicy",
    "PoolSignal",
    "PoolSpec",
    "Reason",
    "ThresholdController",
]
