"""Per hour and per pool: the static B_short = 8192 and the adaptive one side by side.

Usage: python benchmarks/adaptive_hours.py [--day azure-2024-week|shifting-mix]
       [--short-len N] [--rate R] [--hour-s S] [--seed S]

The diagnosis behind docs/adaptive.md ("The first rule, and why it lost
hours"): the day of `adaptive_threshold.py --quick` (20 req/s, 45 s hours) at
the planned pool sizes, one line per hour with each run's verdict (the hour's
P99 TTFT <= 2 s and P99 TPOT <= 80 ms over all its requests) and each pool's
requests, P99 TTFT and P99 TPOT, and the adaptive threshold's range and moves
in that hour. The last line is one JSON object (the same, per hour).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import adaptive_threshold as at
from _common import emit, percentile
from dualpool.policy import AdaptiveConfig
from dualpool.simulator import SimOptions, Simulation, dual_pool_fleet
from dualpool.simulator.fleet import SHORT_ENGINE
from dualpool.simulator.sizing import size_fleet


class PoolHourSink(at.HourSink):
    """HourSink, and per (hour, pool): TTFTs, TPOTs."""

    def __init__(self, hour_s: float, hours: int) -> None:
        super().__init__(hour_s, hours)
        self.pools: dict[tuple[int, str], tuple[list[float], list[float]]] = {}

    def write(self, row: tuple[Any, ...]) -> None:
        super().write(row)
        if row[6] is None:
            return
        h = min(len(self.ttft) - 1, int(row[0] // self.hour_s))
        ttft, tpot = self.pools.setdefault((h, row[1]), ([], []))
        ttft.append(row[6])
        if row[5] > 1:
            tpot.append(row[7])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--day", default="azure-2024-week", choices=("azure-2024-week", "shifting-mix"))
    ap.add_argument("--short-len", type=int, default=16384)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--hour-s", type=float, default=45.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    hours = 24
    reqs = at.day_requests(args.day, hours, args.hour_s, args.rate, args.seed)
    se = dataclasses.replace(SHORT_ENGINE, max_model_len=args.short_len)
    base = dual_pool_fleet(at.MODEL, at.GPU, b_short=8192, short_engine=se)
    sample = [r.at(r.arrival_s) for r in reqs[:: max(1, len(reqs) // 4000)]]
    planned, _ = size_fleet(base, sample, utilization=0.8, rate=args.rate)
    counts = [p.num_instances for p in planned.pools]
    fleet = at._with(planned, counts, 8192)
    sinks: dict[str, PoolHourSink] = {}
    log: list[tuple[float, int]] = []
    for name, cfg in (("static", None), ("adaptive", AdaptiveConfig(interval_s=5.0))):
        sink = PoolHourSink(args.hour_s, hours)
        sim = Simulation(fleet, SimOptions(adaptive=cfg), records=sink)
        sim.run(reqs)
        sinks[name] = sink
        if cfg is not None:
            log = sim.threshold_log
    rows = []
    for h in range(hours):
        row: dict[str, Any] = {"hour": h}
        for name, sink in sinks.items():
            d: dict[str, Any] = {"meets": sink.met()[h]}
            for pool in ("short", "long"):
                ttft, tpot = sink.pools.get((h, pool), ([], []))
                d[pool] = {
                    "requests": len(ttft),
                    "ttft_p99_s": round(percentile(ttft, 99), 3) if ttft else None,
                    "tpot_p99_ms": round(1000 * percentile(tpot, 99), 1) if tpot else None,
                }
            row[name] = d
        ts = [t for s, t in log if h * args.hour_s <= s < (h + 1) * args.hour_s]
        row["adaptive_threshold"] = [min(ts), max(ts)] if ts else None
        row["adaptive_moves"] = len(ts)
        rows.append(row)
        cells = []
        for name in sinks:
            d = row[name]
            pools = " ".join(
                f"{p[0]} n{d[p]['requests']} ttft {d[p]['ttft_p99_s']} tpot {d[p]['tpot_p99_ms']}"
                for p in ("short", "long")
            )
            cells.append(f"{name} {'meets' if d['meets'] else 'MISS '} {pools}")
        print(f"{h:2d} | " + " | ".join(cells) + f" | B_short {row['adaptive_threshold']}")
    emit(
        {
            "day": args.day,
            "short_max_model_len": args.short_len,
            "planned_instances": dict(zip([p.name for p in planned.pools], counts, strict=True)),
            "hours_met": {n: sum(s.met()) for n, s in sinks.items()},
            "hours": rows,
        }
    )


if __name__ == "__main__":
    main()
