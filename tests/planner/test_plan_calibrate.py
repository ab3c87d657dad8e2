"""The calibrated SLO-aware estimate: the simulated load curve, against the verifier."""

from __future__ import annotations

import dataclasses
import math

import pytest

from dualpool.planner import Mix, PlanSettings, plan
from dualpool.planner._calibrate import CalibrationSettings, calibrated_pool_size
from dualpool.planner._capacity import PoolDesign
from dualpool.planner._plan import DEFAULT_SHORT


def test_calibrated_count_brackets_the_slo(small_mix: Mix, small_settings: PlanSettings) -> None:
    s = small_settings
    design = PoolDesign("short", dataclasses.replace(DEFAULT_SHORT, tensor_parallel_size=1), 8192)
    mask = small_mix.budget <= 8192
    base = small_mix.requests(mask)
    base_rate = (len(base) - 1) / (base[-1].arrival_s - base[0].arrival_s)
    # A tight TPOT target so that the utilization cap does not bind.
    cal = calibrated_pool_size(
        s.model,
        s.gpu,
        design,
        base,
        base_rate,
        200.0,
        mu=40.0,
        ttft_slo=1.0,
        tpot_slo=0.012,
        utilization=0.9,
        settings=CalibrationSettings(requests=300, instances=2),
    )
    assert cal.attainable and cal.binding in ("ttft", "tpot")
    assert cal.instances >= math.ceil(200.0 / (0.9 * 40.0))
    # The interpolated load lies between a measured pass and a measured fail.
    passing = [p.rate for p in cal.points if p.ratio <= 1.0]
    failing = [p.rate for p in cal.points if p.ratio > 1.0]
    assert passing and failing
    assert max(passing) <= cal.rate <= min(r for r in failing if r >= max(passing))
    assert cal.instances == math.ceil(200.0 / cal.rate - 1e-9)


def test_plan_reports_both_estimates(small_mix: Mix, small_settings: PlanSettings) -> None:
    s = dataclasses.replace(small_settings, simulate=False, sweep_budgets=())
    cal = plan(s, small_mix)
    mgc = plan(dataclasses.replace(s, calibrate=False), small_mix)
    for fleet in ("homogeneous", "split"):
        for a, b in zip(cal[fleet]["pools"], mgc[fleet]["pools"], strict=True):
            assert a["analytic"]["method"] == "calibrated"
            assert b["analytic"]["method"] == "mgc"
            # The closed-form count is kept beside the calibrated one.
            assert a["analytic"]["queueing_mgc"] == b["analytic"]["queueing"]
            assert a["analytic"]["queueing"] >= a["analytic"]["discrete"]


@pytest.mark.slow
def test_calibrated_tracks_the_verified_count(small_mix: Mix, small_settings: PlanSettings) -> None:
    p = plan(dataclasses.replace(small_settings, sweep_budgets=()), small_mix)
    for fleet in ("homogeneous", "split"):
        for pool in p[fleet]["pools"]:
            sim = pool["simulation"]
            an = pool["analytic"]
            if not sim["found"]:
                continue
            if an["binding"] == "utilization":
                # The cap binds: the estimate is the discrete form (by design
                # never below it); the verifier may go lower.
                assert an["queueing"] == an["discrete"] >= sim["instances"]
                continue
            # Same simulator, same requests: the interpolation and the search
            # tolerance are what separate them.
            assert abs(an["queueing"] - sim["instances"]) <= max(1, 0.15 * sim["instances"])
