"""Small, fast planning inputs shared by the planner tests."""

from __future__ import annotations

import pytest

from dualpool.engine import get_gpu, get_model
from dualpool.planner import Mix, PlanSettings, VerifySettings, mix_from_requests
from dualpool.workload import open_workload


@pytest.fixture(scope="session")
def small_mix() -> Mix:
    w = open_workload("azure-conv-like?num_requests=2500&seed=1")
    return mix_from_requests(list(w), w.describe())


@pytest.fixture
def small_settings() -> PlanSettings:
    # An 8B model on H100 at 40 req/s: a handful of instances per pool.
    return PlanSettings(
        model=get_model("llama-3.1-8b"),
        gpu=get_gpu("h100-80gb"),
        rate=40.0,
        verify=VerifySettings(
            requests=400, instances=2, min_measured=400, min_windows=3, max_windows=4
        ),
        sweep_budgets=(2048, 8192),
        three_pool=None,
    )
