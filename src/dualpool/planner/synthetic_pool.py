"""A synthetic pool for checking the verification's statistics (tests, benchmarks).

The whole-pool simulation is replaced by a power law with noise of its own on
every run: r_TTFT(G) = (c / G)^beta exp(sigma e), e ~ N(0, 1) drawn per
(pool, window, count), independent from one count to the next on a window, as
measured on ShareGPT's short pool at 1,000 req/s (docs/planner.md: P99 TTFT sd
~2% per run, elasticity ~0.5, correlation between counts 0.0). The true
crossings are CROSS: the true saving is 1 - 1,250 / 1,000 = -25%. Everything
else (`replicate`, `run_window`, the search, the probes, the final round) is
the planner's own code. One implementation for tests/planner/test_plan_readings.py
and benchmarks/planner_coverage.py.
"""

from __future__ import annotations

import dataclasses
import math
import random
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dualpool.engine import get_gpu, get_model
from dualpool.planner._capacity import PoolDesign
from dualpool.planner._plan import DEFAULT_SHORT
from dualpool.planner._replicate import Comparison, Replicated, replicate, window_plan
from dualpool.planner._verify import PoolSim
from dualpool.planner._windows import WindowJob, WindowOutcome, run_window

TTFT, TPOT = 2.0, 0.08
CROSS = {"homogeneous": 1000.0, "short": 1250.0}
COMPARISON = Comparison("split", (("homogeneous", 1),), (("short", 1),))

PoolRun = Callable[..., PoolSim]


def pool_sim(g: int, r_ttft: float, r_tpot: float = 0.7, early: bool = False) -> PoolSim:
    """A whole-pool result at g instances with these SLO ratios."""
    t, p = TTFT * r_ttft, TPOT * r_tpot
    return PoolSim(g, g, 1000, 0.5, t, 0.03, p, 0.0, 0, 0.5, t <= TTFT and p <= TPOT, early)


def synthetic_pool(beta: float = 0.5, sigma: float = 0.02, window_sd: float = 0.0) -> PoolRun:
    """A stand-in for `_windows.simulate_whole_pool` (same signature).

    `window_sd`: each window's crossings scaled by exp(window_sd e_w), e_w ~ N(0, 1)
    per window, shared by the pools (a burstier window needs more of each)."""

    def run(
        model: Any, gpu: Any, design: PoolDesign, instances: int, requests: Sequence[Any], **kw: Any
    ) -> PoolSim:
        # The window is known by its first request (prompt tokens = input index + 1).
        key = f"{design.name}:{kw.get('seed')}:{requests[0].prompt_tokens}:{instances}"
        e = random.Random(zlib.crc32(key.encode())).gauss(0.0, 1.0)
        c = CROSS[design.name]
        if window_sd:
            wkey = f"window:{kw.get('seed')}:{requests[0].prompt_tokens}"
            c *= math.exp(window_sd * random.Random(zlib.crc32(wkey.encode())).gauss(0.0, 1.0))
        r = (c / instances) ** beta * math.exp(sigma * e)
        return pool_sim(instances, r, early=kw.get("prefix_until_s") is not None)

    return run


def plan_on_synthetic_pool(seed: int, precision: float, max_windows: int = 40) -> Replicated:
    """One verification (other windows per seed) of the two synthetic pools.

    The caller puts `synthetic_pool(...)` in place of `_windows.simulate_whole_pool`.
    """
    n = 5000
    arrival = np.arange(n, dtype=np.float64) / 10.0
    prompt = np.arange(1, n + 1, dtype=np.int64)
    output = np.full(n, 10, dtype=np.int64)
    budget = np.full(n, 100, dtype=np.int64)
    wp = window_plan(n, 10.0, seed=seed, warmup_s=0.0, measure_s=1.0, min_measured=5, block=5)
    eng = dataclasses.replace(DEFAULT_SHORT, tensor_parallel_size=1)
    design = {k: PoolDesign(k, eng) for k in CROSS}
    model, gpu = get_model("llama-3.1-8b"), get_gpu("h100-80gb")

    def make(key: str, win: int, at: int | None, start: int, step: float, keep: bool) -> WindowJob:
        return WindowJob(
            key=key,
            design=design[key],
            model=model,
            gpu=gpu,
            arrival_s=arrival,
            prompt=prompt,
            output=output,
            budget=budget,
            source_rate=10.0,
            lo=0,
            hi=1000,
            window=win,
            plan=wp,
            start=start,
            ttft_slo_s=TTFT,
            tpot_slo_s=TPOT,
            step_params=None,
            seed=seed,
            evaluate_at=at,
            keep_samples=keep,
            step=step,
        )

    def runner(jobs: Sequence[WindowJob]) -> list[WindowOutcome]:
        return [run_window(j) for j in jobs]

    return replicate(
        list(CROSS),
        dict.fromkeys(CROSS),
        {"homogeneous": 900, "short": 1400},
        make,
        runner,
        COMPARISON,
        precision=precision,
        confidence=0.95,
        min_windows=4,
        max_windows=max_windows,
        batch=2,
        ttft_slo=TTFT,
        tpot_slo=TPOT,
    )
