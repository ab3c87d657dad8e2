"""The A/B's planning cost: the verified planner and the prediction at the demo's size.

Usage: python benchmarks/compare_plan.py [--quick]

For the default A/B (lmsys-like, 7 req/s, 480 requests, Llama-3-70B on
A100-80GB) and the agent-heavy one (2 req/s, 800 requests, speedup 8):
`compare_plan.plan_arms` (the verified planner on 8 disjoint windows of the
replay's size, then both arms simulated on those windows), timed with the
planner's jobs in this process and on two processes, side by side (ratios:
the machine is shared). Reported: each phase's wall time, the counts, the
saving with its 95% interval, the predicted differences (split -
homogeneous) with their 90% prediction intervals, and the load average.
--quick: the default A/B only, two processes only. The last line is one
JSON object.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit
from dualpool.compare import CompareSettings, _load
from dualpool.compare_plan import plan_arms

CASES = {
    "default": CompareSettings(),
    "agent-heavy": CompareSettings(workload="agent-heavy", rate=2.0, requests=800, speedup=8.0),
}


def one(s: CompareSettings, processes: int) -> dict[str, Any]:
    reqs = _load(s)
    t = time.perf_counter()
    p = plan_arms(s, reqs, processes=processes)
    total = time.perf_counter() - t
    pr = p.prediction
    assert pr is not None
    return {
        "processes": processes,
        "wall_s": round(total, 2),
        "planner_s": round(p.planner_s, 2),
        "prediction_s": round(pr.elapsed_s, 2),
        "planned": p.planned,
        "budget_gpus": p.budget_gpus,
        "arms": {a: {x.name: x.instances for x in v} for a, v in p.arms.items()},
        "saving": round(p.saving, 4),
        "saving_ci95": [round(x, 4) for x in p.saving_ci],
        "planner_windows": p.planner_windows,
        "overlapping": p.overlapping,
        "predicted_split_ahead": pr.split_ahead(),
        "difference": {
            m: {"point": round(pr.diff(m), 4), "range90": [round(x, 4) for x in pr.diff_range(m)]}
            for m in ("goodput", "ttft_p99_s")
        },
        "loadavg": os.getloadavg()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    cases = ["default"] if args.quick else list(CASES)
    out: dict[str, Any] = {"loadavg_start": os.getloadavg()[0]}
    for name in cases:
        runs = [one(CASES[name], n) for n in ((2,) if args.quick else (1, 2))]
        for r in runs:
            print(f"{name}: {r}", flush=True)
        out[name] = runs
        if len(runs) == 2:
            out[name + "_speedup_2_processes"] = round(runs[0]["wall_s"] / runs[1]["wall_s"], 2)
    out["loadavg_end"] = os.getloadavg()[0]
    emit(out)


if __name__ == "__main__":
    main()
