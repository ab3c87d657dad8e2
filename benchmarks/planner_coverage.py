"""Is the verification's 95% interval a 95% interval? Coverage on a synthetic pool.

Usage: python benchmarks/planner_coverage.py [--quick] [--plans N] [--precision P]
       [--max-windows N] [--sigma S] [--beta B]

The planner's real verification (`_replicate.replicate`, `_windows.run_window`,
the search, the probes, the final round) runs on two synthetic pools whose
whole-pool simulation is replaced by a power law with noise of its own on
every run: r_TTFT(G) = (c / G)^beta exp(sigma e), e ~ N(0, 1) drawn per
(pool, window, count), independent from one count to the next on a window,
as measured on ShareGPT's short pool at 1,000 req/s (docs/planner.md:
P99 TTFT sd ~2% per run, elasticity ~0.5, correlation between counts 0.0).
The true crossings are c = 1,000 (homogeneous) and 1,250 (split): the
true saving is -25%. Each plan uses other windows (its seed); reported: how
many plans' 95% intervals hold -25%, the mean windows, half-width and
simulations, and the spread of the estimates between plans (an honest
interval's half-width is ~2 of them).

--quick: 30 plans. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from _common import emit
from dualpool.planner import _windows
from dualpool.planner._stats import interval
from dualpool.planner.synthetic_pool import (
    COMPARISON,
    CROSS,
    plan_on_synthetic_pool,
    synthetic_pool,
)

RUNS = [0]


def plan_once(seed: int, precision: float, max_windows: int) -> tuple[list[float], int]:
    """One plan's per-window savings and the synthetic pool's runs it took."""
    RUNS[0] = 0
    got = plan_on_synthetic_pool(seed, precision, max_windows)
    cross = {k: [o.crossing for o in v] for k, v in got.outs.items()}
    return COMPARISON.savings(cross, len(cross["homogeneous"])), RUNS[0]


def counted(pool: Any) -> Any:
    """The pool, each run counted in RUNS (the simulations a plan costs)."""

    def run(*args: Any, **kw: Any) -> Any:
        RUNS[0] += 1
        return pool(*args, **kw)

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--plans", type=int, default=None)
    ap.add_argument("--precision", type=float, default=0.02)
    ap.add_argument("--max-windows", type=int, default=40)
    ap.add_argument("--sigma", type=float, default=0.02)
    ap.add_argument("--beta", type=float, default=0.5)
    args = ap.parse_args()
    plans = args.plans or (30 if args.quick else 100)
    _windows.simulate_whole_pool = counted(synthetic_pool(args.beta, args.sigma))
    truth = 1.0 - CROSS["short"] / CROSS["homogeneous"]
    hits, windows, widths, means, sims = 0, [], [], [], []
    for seed in range(plans):
        s, n = plan_once(seed, args.precision, args.max_windows)
        iv = interval(s)
        hits += iv.contains(truth)
        windows.append(len(s))
        widths.append(iv.half_width)
        means.append(iv.mean)
        sims.append(n)
    emit(
        {
            "plans": plans,
            "precision": args.precision,
            "max_windows": args.max_windows,
            "sigma": args.sigma,
            "beta": args.beta,
            "true_saving": truth,
            "coverage": hits / plans,
            "mean_windows": statistics.mean(windows),
            "mean_half_width": statistics.mean(widths),
            "max_half_width": max(widths),
            "mean_saving": statistics.mean(means),
            # Spread of the estimates between plans: an honest interval's
            # half-width is about t x this.
            "sd_between_plans": statistics.stdev(means),
            "mean_simulations": statistics.mean(sims),
        }
    )


if __name__ == "__main__":
    main()
