"""`dualpool demo --compare` on both mixes: the measured direction is the planner's.

On azure-conv-like the planner predicts the split ahead (a lower P99 TTFT at the
same GPUs); on agent-heavy it predicts none (the short pool cannot meet a 2 s
P99 TTFT on 8K-token agent prompts without many instances, so the split at the
homogeneous fleet's budget is starved). Small runs (a few hundred requests,
speedup 8); the figures at full size are in docs/bench.md.
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
    ("workload", "rate", "requests", "ahead"),
    [("azure-conv-like", 8.0, 900, True), ("agent-heavy", 2.0, 240, False)],
)
def test_the_measured_direction_is_the_predicted_one(
    workload: str, rate: float, requests: int, ahead: bool
) -> None:
    s = CompareSettings(workload=workload, rate=rate, requests=requests, speedup=8.0)
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
