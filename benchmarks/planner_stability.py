"""Does the plan's answer hold? The same input planned with different windows and precisions.

Usage: python benchmarks/planner_stability.py [--quick] [--processes N] [--workloads a,b]
       [--seeds N | --seed-list 1,2] [--fine-seeds N | --fine-seed-list 0,1]
       [--lmsys-requests N]
       python benchmarks/planner_stability.py --combine OUT... [--row W:SEED:PREC:SAVING:HW]...

For each workload (azure_2023_conv, lmsys_cdf, sharegpt_8k at 1,000 req/s,
Llama-3-70B on A100-80GB, the planner's defaults otherwise) the plan runs
with seeds 0..4 (different windows of the trace; on synthetic inputs
different windows of the generated stream) at the default precision (2
points of saving), and with seeds 0..1 at 1 point. Reported per workload:
each saving with its 95% interval, whether every saving lies inside every
other plan's interval, the largest half-width, the plans' wall time and
simulations.

A note on the criterion: two independent estimates with equal 95% intervals
each fall inside the other's interval only ~83% of the time (their
difference has sqrt(2) times the spread), so "every saving inside every other
interval" over 7 plans is a demanding target; the benchmark also reports
whether all intervals overlap (a common value exists), the contained pairs
by precision (default with default, 1 point with 1 point, across) beside the
count honest intervals predict (each pair: P(|d| < h_b), d ~ N(0, (h_a /
1.96)^2 + (h_b / 1.96)^2)), and the matrix of pairs.

--combine runs nothing: it pools the plans of earlier runs (their output
files) and rows recorded elsewhere (--row), and reports the same.

--quick: seeds 0..2 at 2 points and seed 0 at 1 point. Each plan's wall time,
CPU seconds (its workers included: on 2 idle cores the wall time is about
half of it) and the load average are recorded: the machine is shared.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from statistics import NormalDist
from typing import Any

from _common import emit, shared_data_dir
from dualpool.engine import get_gpu, get_model
from dualpool.planner import Mix, PlanSettings, mix_from_requests, plan
from dualpool.planner._parallel import make_runner
from dualpool.workload import limit, open_workload


def workloads(names: list[str], lmsys_requests: int = 600_000) -> dict[str, Mix]:
    d = shared_data_dir()
    specs = {
        "azure_2023_conv": str(d / "traces/azure_2023_conv.csv"),
        # 600,000 requests: 15 disjoint windows of a run's 40,000 measured ones.
        "lmsys_cdf": f"cdf:{d / 'cdf/lmsys_cdf.json'}?rate=10&num_requests={lmsys_requests}&seed=0",
        "sharegpt_8k": f"lengths:{d / 'traces/sharegpt_8k_lengths_llama2.csv'}?rate=10",
    }
    out = {}
    for n in names:
        w = open_workload(specs[n])
        cap = lmsys_requests if n == "lmsys_cdf" else 600_000
        out[n] = mix_from_requests(list(limit(w, cap)), w.describe())
    return out


def load() -> float:
    return os.getloadavg()[0]


def cpu_s() -> float:
    """CPU seconds of this process and its (finished) workers."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def pair_label(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Which precisions a pair joins: "2-2", "1-1" or "cross"."""
    pa, pb = (f"{r['precision'] * 100:g}" for r in (a, b))
    return f"{pa}-{pb}" if pa == pb else "cross"


def honest_containment(h_a: float, h_b: float) -> float:
    """P(a's saving inside b's 95% interval) for two independent, unbiased estimates of
    one value with 95% half-widths h_a and h_b (normal): P(|d| < h_b), d ~ N(0, s_a^2 +
    s_b^2), s = h / 1.96."""
    if h_a <= 0.0 and h_b <= 0.0:
        return 1.0
    return 2.0 * NormalDist().cdf(1.96 * h_b / math.hypot(h_a, h_b)) - 1.0


def summarise(plans: list[dict[str, Any]]) -> dict[str, Any]:
    """Every ordered pair of plans (a, b), a != b, across precisions too: is a's saving
    inside b's 95% interval; against the count honest intervals predict."""
    counts: dict[str, list[float]] = {}
    matrix = []
    for a in plans:
        line = ""
        for b in plans:
            if a is b:
                line += "-"
                continue
            inside = b["low"] <= a["saving"] <= b["high"]
            line += "x" if inside else "."
            for key in ("all", pair_label(a, b)):
                c = counts.setdefault(key, [0, 0, 0.0])
                c[0] += inside
                c[1] += 1
                c[2] += honest_containment(a["half_width"], b["half_width"])
        matrix.append(f"{a['seed']}@{a['precision'] * 100:g}: {line}")
    contained, pairs, _ = counts.get("all", [0, 0, 0.0])
    overlap = max(r["low"] for r in plans) <= min(r["high"] for r in plans)
    hw = max(r["half_width"] for r in plans)
    return {
        "plans": plans,
        "pairs_contained": f"{contained:.0f}/{pairs:.0f}",
        "all_contained": contained == pairs,
        # The same, by the pair's precisions, with the count expected of honest intervals.
        "containment": {
            k: {"contained": int(c[0]), "pairs": int(c[1]), "expected": round(c[2], 1)}
            for k, c in counts.items()
        },
        # Row a, column b: "x" when a's saving is inside b's interval (rows and columns
        # in the order of "plans", labelled seed@precision in points).
        "matrix": matrix,
        "intervals_overlap": overlap,
        "max_half_width": hw,
        "target_met": contained == pairs and hw <= 0.02 + 1e-12,
    }


def report(name: str, summary: dict[str, Any]) -> None:
    by = "; ".join(
        f"{k} {c['contained']}/{c['pairs']} (honest intervals: ~{c['expected']:.1f})"
        for k, c in summary["containment"].items()
        if k != "all"
    )
    print(
        f"{name}: {summary['pairs_contained']} savings inside the others' intervals "
        f"(honest intervals: ~{summary['containment'].get('all', {}).get('expected', 0):.1f}; "
        f"{by}); all intervals overlap: {summary['intervals_overlap']}; max half-width "
        f"{summary['max_half_width'] * 100:.2f} pts",
        flush=True,
    )
    for line in summary["matrix"]:
        print(f"  {line}", flush=True)


def combine(files: list[str], rows: list[str]) -> None:
    """The report of plans run earlier (and of rows recorded elsewhere), without running."""
    pooled: dict[str, dict[tuple[int, float], dict[str, Any]]] = {}
    for f in files:
        last = Path(f).read_text().strip().splitlines()[-1]
        for name, w in json.loads(last)["workloads"].items():
            for r in w["plans"]:
                pooled.setdefault(name, {})[(r["seed"], r["precision"])] = r
    for text in rows:
        try:
            name, seed, prec, saving, hw = text.split(":")
            r = {"seed": int(seed), "precision": float(prec), "saving": float(saving)}
            r["half_width"] = float(hw)
        except ValueError:
            sys.stderr.write(
                f"--row: expected WORKLOAD:SEED:PRECISION:SAVING:HALF_WIDTH, got {text!r}\n"
            )
            sys.exit(2)
        r["low"], r["high"] = r["saving"] - r["half_width"], r["saving"] + r["half_width"]
        pooled.setdefault(name, {})[(r["seed"], r["precision"])] = r
    result: dict[str, Any] = {"combined": files, "rows": rows, "workloads": {}}
    for name, by_key in pooled.items():
        # Default precision first, then the finer plans, each by seed.
        plans = [by_key[k] for k in sorted(by_key, key=lambda k: (-k[1], k[0]))]
        summary = summarise(plans)
        result["workloads"][name] = summary
        report(name, summary)
    result["target_met"] = all(w["target_met"] for w in result["workloads"].values())
    result["max_half_width"] = max(
        (w["max_half_width"] for w in result["workloads"].values()), default=0.0
    )
    emit(result)


def seed_list(listed: str | None, count: int) -> list[int]:
    """The seeds named (`1,2`; empty: none), else 0..count-1."""
    if listed is None:
        return list(range(count))
    return [int(x) for x in listed.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--processes", type=int, default=None)
    ap.add_argument("--workloads", default="azure_2023_conv,lmsys_cdf,sharegpt_8k")
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument(
        "--max-windows", type=int, default=None, help="default: the planner's (follows precision)"
    )
    ap.add_argument(
        "--measure-s", type=float, default=None, help="measured seconds per run (planner default)"
    )
    ap.add_argument(
        "--lmsys-requests",
        type=int,
        default=600_000,
        help="requests generated for lmsys_cdf (600,000: 15 disjoint windows; a plan with "
        "more windows reuses requests, and its interval is too narrow)",
    )
    ap.add_argument("--seeds", type=int, default=None, help="seeds at the default precision")
    ap.add_argument("--fine-seeds", type=int, default=None, help="seeds at 1 point")
    ap.add_argument(
        "--seed-list", default=None, help="these seeds at the default precision (e.g. 1,2)"
    )
    ap.add_argument("--fine-seed-list", default=None, help="these seeds at 1 point (e.g. 0,1)")
    ap.add_argument(
        "--combine",
        nargs="+",
        metavar="FILE",
        help="run nothing: pool the plans of earlier runs (files whose last line is this "
        "benchmark's JSON) and report their containment",
    )
    ap.add_argument(
        "--row",
        action="append",
        metavar="WORKLOAD:SEED:PRECISION:SAVING:HALF_WIDTH",
        help="run nothing: a plan recorded elsewhere, e.g. sharegpt_8k:1:0.02:-0.264:0.017 "
        "(repeatable; pooled with --combine's)",
    )
    args = ap.parse_args()
    if args.combine or args.row:
        combine(args.combine or [], args.row or [])
        return
    coarse = args.seeds if args.seeds is not None else (3 if args.quick else 5)
    runs = [(s, 0.02) for s in seed_list(args.seed_list, coarse)]
    fine = args.fine_seeds if args.fine_seeds is not None else (1 if args.quick else 2)
    runs += [(s, 0.01) for s in seed_list(args.fine_seed_list, fine)]
    if not runs:
        sys.stderr.write("--seeds/--seed-list/--fine-seeds/--fine-seed-list: no plan to run\n")
        sys.exit(2)
    runner = make_runner("local", processes=args.processes)
    base = PlanSettings(
        model=get_model("llama-3-70b"),
        gpu=get_gpu("a100-80gb"),
        rate=args.rate,
        three_pool=None,
    )
    result: dict[str, Any] = {
        "rate": args.rate,
        "quick": args.quick,
        "lmsys_requests": args.lmsys_requests,
        "workloads": {},
    }
    all_ok = True
    max_hw = 0.0
    for name, mix in workloads(args.workloads.split(","), args.lmsys_requests).items():
        plans = []
        for seed, prec in runs:
            s = dataclasses.replace(
                base,
                verify=dataclasses.replace(
                    base.verify,
                    seed=seed,
                    precision=prec,
                    max_windows=args.max_windows,
                    measure_s=args.measure_s or base.verify.measure_s,
                ),
            )
            la = load()
            t0, c0 = time.perf_counter(), cpu_s()
            p = plan(s, mix, runner)
            wall, cpu = time.perf_counter() - t0, cpu_s() - c0
            ci = p["saving_ci"]
            ver = p["verification"]
            row = {
                "seed": seed,
                "precision": prec,
                "saving": ci["mean"],
                "half_width": ci["half_width"],
                "low": ci["low"],
                "high": ci["high"],
                "windows": ver["windows"],
                # The spread of one window's saving: the half-width falls as
                # t sd / sqrt(windows).
                "per_window_sd": statistics.stdev(ver["per_window_saving"])
                if len(ver["per_window_saving"]) > 1
                else None,
                "converged": ver["converged"],
                "overlapping_windows": ver["overlapping"],
                "homogeneous_gpus": p["homogeneous"]["gpus"],
                "split_gpus": p["split"]["gpus"],
                "slo_confidence": [p[f].get("slo_confidence") for f in ("homogeneous", "split")],
                "simulations": ver["simulations"],
                # Pools whose provisioned count moved after the last window.
                "final_rerun": ver.get("final_rerun", []),
                # The SLO-aware estimate against the whole-fleet verification.
                "pools": {
                    f"{f}/{pool['pool']}": {
                        "estimate": pool["analytic"]["queueing"],
                        "discrete": pool["analytic"]["discrete"],
                        "needed": pool["simulation"]["needed"]["mean"],
                        "needed_half_width": pool["simulation"]["needed"]["half_width"],
                        "provisioned": pool["simulation"]["instances"],
                        "slo_confidence": pool["simulation"]["slo_test"]["confidence"],
                    }
                    for f in ("homogeneous", "split")
                    for pool in p[f]["pools"]
                },
                "wall_s": round(wall, 1),
                # On 2 idle cores the wall time would be about cpu_s / 2.
                "cpu_s": round(cpu, 1),
                "load_before": round(la, 1),
                "load_after": round(load(), 1),
            }
            plans.append(row)
            print(
                f"{name} seed {seed} precision {prec:.0%}: saving {ci['mean']:.1%} "
                f"+- {ci['half_width'] * 100:.1f} pts ({ver['windows']} windows, "
                f"{ver['simulations']} sims, {wall:.0f} s wall, {cpu:.0f} CPU-s, load {la:.1f}); GPUs "
                f"{row['homogeneous_gpus']:,} -> {row['split_gpus']:,}",
                flush=True,
            )
        summary = summarise(plans)
        all_ok &= summary["target_met"]
        max_hw = max(max_hw, summary["max_half_width"])
        result["workloads"][name] = summary
        report(name, summary)
    result["target_met"] = all_ok
    result["max_half_width"] = max_hw
    emit(result)


if __name__ == "__main__":
    main()
