"""The adaptive B_short against the best static threshold chosen in hindsight.

Usage: python benchmarks/adaptive_threshold.py [--quick] [--seed S] [--plot FILE.png]

Two traffic days (the week with --week), each hour compressed to `hour_s`
simulated seconds at that hour's arrival rate (queues carry over between
hours; the controller sees a whole day's drift in minutes, which is harder
than real time, not easier):

- azure-2024-week: the workload module's preset (code + conversation at their
  row shares, a daily sine of +-40% peaking at 14:00), at --rate req/s on
  average: the load moves over the day, the mix does not.
- shifting-mix: a synthetic day whose mix moves: conversation (the Azure conv
  fit) plus long-prompt requests (lognormal, median ~8,100 prompt tokens, so
  about half of them need the long pool) whose share goes from 10% at 06:00 to
  45% at 18:00, at the same mean rate: the two pools' loads drift apart.

The fleet is the paper's two pools (short 8K/128/16K, long 64K/16/8K) of
Llama-3-70B on H100, sized by the simulator's sizing (`dualpool simulate`'s
planner: 80% of each pool's saturated throughput on its share) for the static
B_short = 8192 on the day's mean rate. Each day is simulated with every static
threshold of a grid and with the adaptive controller, at that size and at
scaled sizes (each pool x 0.6 .. 1.25).

Per hour (requests by arrival hour): the SLOs are met when P99 TTFT <= 2 s and
P99 TPOT <= 80 ms (refusals count as misses). Reported per configuration:

- share of hours meeting the SLOs at the planned size (95% Wilson interval);
- GPUs needed per hour: the smallest of the scaled fleets that meets the SLOs
  in that hour (the largest scale + 1 step when none does), averaged over hours;
- the adaptive controller minus the best static threshold in hindsight (best
  by share of hours; for GPUs, by mean GPUs needed), paired over hours, with a
  95% bootstrap interval.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import math
import random
import time
from collections.abc import Iterator
from typing import Any

from _common import emit, percentile
from dualpool.policy import AdaptiveConfig
from dualpool.simulator import FleetConfig, RecordSink, SimOptions, Simulation, dual_pool_fleet
from dualpool.simulator.fleet import SHORT_ENGINE
from dualpool.simulator.sizing import size_fleet
from dualpool.workload import Request, preset

MODEL = "llama-3-70b"
GPU = "h100-80gb"
HOUR_S = 3600.0
SLO_TTFT = 2.0
SLO_TPOT = 0.080


def _diurnal(hour: int, amplitude: float = 0.4, peak: float = 14.0) -> float:
    return 1.0 + amplitude * math.sin(2 * math.pi * (hour - peak) / 24.0 + math.pi / 2.0)


def day_requests(kind: str, hours: int, hour_s: float, rate: float, seed: int) -> list[Request]:
    """One compressed day (or week): hour h occupies [h * hour_s, (h + 1) * hour_s)."""
    out: list[Request] = []
    for h in range(hours):
        hod = h % 24
        r_h = rate * _diurnal(hod)
        parts: list[Iterator[Request]] = []
        if kind == "azure-2024-week":
            parts.append(
                iter(
                    preset(
                        "azure-2024-week",
                        rate=r_h,
                        duration_s=hour_s,
                        diurnal_amplitude=0.0,
                        seed=seed * 1000 + h,
                    )
                )
            )
        else:
            share = 0.1 + 0.35 * (1 + math.sin(2 * math.pi * (hod - 12.0) / 24.0)) / 2
            parts.append(
                iter(
                    preset(
                        "azure-conv-like",
                        rate=r_h * (1 - share),
                        duration_s=hour_s,
                        seed=seed * 1000 + h,
                    )
                )
            )
            parts.append(
                iter(
                    preset(
                        "lognormal",
                        rate=r_h * share,
                        duration_s=hour_s,
                        prompt_mu=9.0,
                        prompt_sigma=0.5,
                        output_mu=5.0,
                        output_sigma=0.8,
                        prompt_max=60000,
                        seed=seed * 1000 + 500 + h,
                    )
                )
            )
        t0 = h * hour_s
        for r in heapq.merge(*parts, key=lambda q: q.arrival_s):
            out.append(r.at(t0 + r.arrival_s))
    return out


class HourSink(RecordSink):
    """Per arrival hour: TTFTs and TPOTs of completed requests, and refusals."""

    def __init__(self, hour_s: float, hours: int) -> None:
        self.hour_s = hour_s
        self.ttft: list[list[float]] = [[] for _ in range(hours)]
        self.tpot: list[list[float]] = [[] for _ in range(hours)]
        self.refused = [0] * hours

    def write(self, row: tuple[Any, ...]) -> None:
        h = min(len(self.ttft) - 1, int(row[0] // self.hour_s))
        if row[6] is None:
            self.refused[h] += 1
            return
        self.ttft[h].append(row[6])
        if row[5] > 1:
            self.tpot[h].append(row[7])

    def close(self) -> None:
        pass

    def met(self) -> list[bool]:
        out = []
        for h in range(len(self.ttft)):
            n = len(self.ttft[h]) + self.refused[h]
            if n == 0:
                out.append(True)
                continue
            # Refusals count as misses: P99 over all requests of the hour.
            ttfts = self.ttft[h] + [math.inf] * self.refused[h]
            ok = percentile(ttfts, 99) <= SLO_TTFT
            if self.tpot[h]:
                ok = ok and percentile(self.tpot[h], 99) <= SLO_TPOT
            out.append(ok)
        return out


def run(
    fleet: FleetConfig, reqs: list[Request], hours: int, hour_s: float, adaptive: bool
) -> tuple[list[bool], list[tuple[float, int]]]:
    cfg = AdaptiveConfig(interval_s=5.0) if adaptive else None
    sink = HourSink(hour_s, hours)
    sim = Simulation(fleet, SimOptions(adaptive=cfg), records=sink)
    sim.run(reqs)
    return sink.met(), sim.threshold_log


def wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    z = 1.96
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (round(max(0.0, c - h), 4), round(min(1.0, c + h), 4))


def paired_ci(diffs: list[float], seed: int, n: int = 2000) -> tuple[float, float]:
    rng = random.Random(seed)
    m = len(diffs)
    means = sorted(sum(diffs[rng.randrange(m)] for _ in range(m)) / m for _ in range(n))
    return (round(means[int(0.025 * n)], 4), round(means[int(0.975 * n) - 1], 4))


def study(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    hours = 24 * (7 if args.week and kind == "azure-2024-week" else 1)
    hour_s = args.hour_s
    reqs = day_requests(kind, hours, hour_s, args.rate, args.seed)
    short_engine = dataclasses.replace(SHORT_ENGINE, max_model_len=args.short_len)
    base = dual_pool_fleet(MODEL, GPU, b_short=8192, short_engine=short_engine)
    sample = [r.at(r.arrival_s) for r in reqs[:: max(1, len(reqs) // 4000)]]
    planned, _ = size_fleet(base, sample, utilization=0.8, rate=args.rate)
    counts = [p.num_instances for p in planned.pools]
    gpus_per = [p.gpus_per_instance for p in planned.pools]
    scales = (0.6, 0.8, 1.0, 1.25) if not args.quick else (0.7, 1.0, 1.3)
    thresholds = (2048, 4096, 6144, 8192) if not args.quick else (4096, 8192)
    if args.short_len > 8192:
        thresholds = (*thresholds, args.short_len)
    configs: list[tuple[str, int | None]] = [(f"static-{b}", b) for b in thresholds]
    configs.append(("adaptive", None))
    met: dict[tuple[str, float], list[bool]] = {}
    gpus_of: dict[float, int] = {}
    trajectory: list[tuple[float, int]] = []
    for f in scales:
        c = [max(1, round(n * f)) for n in counts]
        gpus_of[f] = sum(n * g for n, g in zip(c, gpus_per, strict=True))
        for name, b in configs:
            fleet = _with(planned, c, b if b is not None else 8192)
            t0 = time.perf_counter()
            m, log = run(fleet, reqs, hours, hour_s, b is None)
            met[(name, f)] = m
            if b is None and f == 1.0:
                trajectory = log
            print(
                f"{kind} x{f} {name}: {sum(m)}/{hours} hours meet the SLOs "
                f"({time.perf_counter() - t0:.1f} s)",
                flush=True,
            )
    over = max(gpus_of.values()) + min(gpus_of.values())  # "none of them": a step beyond

    def need(name: str) -> list[float]:
        out = []
        for h in range(hours):
            ok = [gpus_of[f] for f in scales if met[(name, f)][h]]
            out.append(float(min(ok)) if ok else float(over))
        return out

    per: dict[str, Any] = {}
    for name, _ in configs:
        k = sum(met[(name, 1.0)])
        needs = need(name)
        per[name] = {
            "hours_met_share": round(k / hours, 4),
            "hours_met_ci95": wilson(k, hours),
            "gpus_needed_mean": round(sum(needs) / hours, 2),
        }
    statics = [n for n, b in configs if b is not None]
    best_slo = max(statics, key=lambda n: (per[n]["hours_met_share"], -per[n]["gpus_needed_mean"]))
    best_gpu = min(statics, key=lambda n: (per[n]["gpus_needed_mean"], -per[n]["hours_met_share"]))
    d_slo = [
        float(a) - float(b)
        for a, b in zip(met[("adaptive", 1.0)], met[(best_slo, 1.0)], strict=True)
    ]
    d_gpu = [a - b for a, b in zip(need("adaptive"), need(best_gpu), strict=True)]
    hourly_t = [8192.0] * hours
    for h in range(hours):
        ts = [t for (s, t) in trajectory if h * hour_s <= s < (h + 1) * hour_s]
        prior = [t for (s, t) in trajectory if s < h * hour_s]
        hourly_t[h] = sum(ts) / len(ts) if ts else (prior[-1] if prior else 8192.0)
    return {
        "hours": hours,
        "hour_s": hour_s,
        "requests": len(reqs),
        "planned_instances": dict(zip([p.name for p in planned.pools], counts, strict=True)),
        "planned_gpus": gpus_of[1.0],
        "gpus_by_scale": {str(f): gpus_of[f] for f in scales},
        "configs": per,
        "best_static_by_slo": best_slo,
        "best_static_by_gpus": best_gpu,
        "adaptive_minus_best_hours_met_share": round(sum(d_slo) / hours, 4),
        "adaptive_minus_best_hours_met_ci95": paired_ci(d_slo, args.seed),
        "adaptive_minus_best_gpus_needed": round(sum(d_gpu) / hours, 2),
        "adaptive_minus_best_gpus_needed_ci95": paired_ci(d_gpu, args.seed + 1),
        "adaptive_moves": len(trajectory) - 1,
        "adaptive_threshold_by_hour": [round(t) for t in hourly_t],
        "_met": {n: met[(n, 1.0)] for n, _ in configs},
        "_need": {n: need(n) for n, _ in configs},
    }


def _with(fleet: FleetConfig, counts: list[int], b_short: int) -> FleetConfig:
    pools = list(fleet.with_instances(counts).pools)
    pools[0] = dataclasses.replace(pools[0], threshold=b_short)
    return dataclasses.replace(fleet, pools=tuple(pools))


def plot(results: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(12, 3.5 * len(results)), squeeze=False)
    for row, (kind, r) in enumerate(results.items()):
        hrs = list(range(r["hours"]))
        ax = axes[row][0]
        ax.plot(hrs, r["adaptive_threshold_by_hour"], label="adaptive B_short (hour mean)")
        best = r["best_static_by_slo"]
        ax.axhline(int(best.split("-")[1]), color="gray", ls="--", label=f"best static ({best})")
        miss_a = [h for h in hrs if not r["_met"]["adaptive"][h]]
        miss_s = [h for h in hrs if not r["_met"][best][h]]
        ax.scatter(miss_a, [1000] * len(miss_a), marker="x", color="red", label="adaptive misses")
        ax.scatter(miss_s, [600] * len(miss_s), marker="|", color="black", label="static misses")
        ax.set_title(f"{kind}: threshold and SLO-missing hours")
        ax.set_xlabel("hour")
        ax.legend(fontsize=7)
        ax = axes[row][1]
        ax.step(hrs, r["_need"]["adaptive"], where="mid", label="adaptive")
        g = r["best_static_by_gpus"]
        ax.step(hrs, r["_need"][g], where="mid", label=f"best static ({g})")
        ax.set_title(f"{kind}: GPUs needed per hour")
        ax.set_xlabel("hour")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one day each, 2 thresholds, 3 sizes")
    ap.add_argument("--week", action="store_true", help="the whole Azure week (168 hours)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate", type=float, default=None, help="mean req/s (default 30, quick 20)")
    ap.add_argument("--hour-s", type=float, default=None, help="simulated s per hour (120; 45)")
    ap.add_argument("--plot", default=None, help="write a PNG of the trajectories here")
    ap.add_argument(
        "--short-len",
        type=int,
        default=8192,
        help="the short pool's max_model_len (default the paper's 8192; above it, the "
        "controller has room to raise B_short over the planned 8192)",
    )
    args = ap.parse_args()
    if args.rate is None:
        args.rate = 20.0 if args.quick else 30.0
    if args.hour_s is None:
        args.hour_s = 45.0 if args.quick else 120.0
    t0 = time.perf_counter()
    results = {kind: study(kind, args) for kind in ("azure-2024-week", "shifting-mix")}
    if args.plot:
        plot(results, args.plot)
    for r in results.values():
        r.pop("_met")
        r.pop("_need")
    emit(
        {
            **results,
            "quick": args.quick,
            "rate": args.rate,
            "seed": args.seed,
            "short_max_model_len": args.short_len,
            "wall_s": round(time.perf_counter() - t0, 1),
        }
    )


if __name__ == "__main__":
    main()
