"""`dualpool demo --compare` on both mixes: the measured verdict is the predicted one.

The default (lmsys-like, 7 req/s, 480 requests, speedup 2): the verified planner
sizes the split at 2 short + 1 long (12 GPUs) against 5 long instances; at 12
GPUs the homogeneous arm (3 instances of 16 sequences) queues, and the split is
ahead: more requests within both SLOs and a lower P99 TTFT. agent-heavy (2
req/s, 800 requests, speedup 8): the planner recommends homogeneous (the split
needs more GPUs); at the homogeneous fleet's 20 GPUs the split's long pool has 3
instances for the longest prompts and its P99 TTFT is the higher: not ahead
(its goodput is the higher: docs/bench.md). "Ahead", predicted and measured
alike (`Prediction.split_ahead`, `measured_advantage`): more goodput and a
lower P99 TTFT. The figures of full runs are in docs/bench.md.
"""

from __future__ import annotations

import pytest

from dualpool.compare import (
    CompareSettings,
    goodput_fraction,
    measured_advantage,
    predicted_advantage,
    run_compare,
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("workload", "rate", "requests", "speedup", "ahead"),
    [("lmsys-like", 7.0, 480, 2.0, True), ("agent-heavy", 2.0, 800, 8.0, False)],
)
def test_the_measured_direction_is_the_predicted_one(
    workload: str, rate: float, requests: int, speedup: float, ahead: bool
) -> None:
    s = CompareSettings(workload=workload, rate=rate, requests=requests, speedup=speedup)
    res = run_compare(s)
    assert predicted_advantage(res.plan) is ahead
    h, sp = res.arms["homogeneous"], res.arms["split"]
    detail = (
        f"goodput {goodput_fraction(res, 'homogeneous'):.1%} vs "
        f"{goodput_fraction(res, 'split'):.1%}, P99 TTFT "
        f"{h.summary.metric('ttft', 'p99'):.0f} vs {sp.summary.metric('ttft', 'p99'):.0f} ms"
    )
    print(f"{workload}: homogeneous vs split: {detail}")
    assert measured_advantage(res) is ahead, detail
