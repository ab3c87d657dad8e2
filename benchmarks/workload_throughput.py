"""Throughput of the workload sources, and the memory of 1M held requests.

Run: .venv/bin/python benchmarks/workload_throughput.py [--quick]
Prints progress lines, then one JSON object (the last line).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from _common import emit, shared_data_dir
from dualpool.workload import AzureTrace, preset


def best_rate(run: Callable[[], int], repeats: int) -> float:
    """Best of `repeats` runs, in items per second (the machine may be shared)."""
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = run()
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    args = ap.parse_args()
    n_synth = 200_000 if args.quick else 1_000_000
    repeats = 2 if args.quick else 5
    out: dict[str, object] = {"benchmark": "workload_throughput"}

    week = preset("azure-2024-week", seed=0)
    out["synthetic_week_rps"] = round(
        best_rate(lambda: sum(1 for _ in itertools.islice(week, n_synth)), repeats)
    )
    print(f"synthetic azure-2024-week: {out['synthetic_week_rps']:,} req/s")

    conv = shared_data_dir() / "traces" / "azure_2023_conv.csv"
    if conv.is_file():
        trace = AzureTrace(conv)
        out["azure_2023_conv_rps"] = round(best_rate(lambda: sum(1 for _ in trace), repeats))
        print(f"azure_2023_conv.csv read: {out['azure_2023_conv_rps']:,} req/s")
    else:
        out["azure_2023_conv_rps"] = None
        print(f"{conv} absent: skipped")

    # a 2024-format file written from the week preset (millisecond timestamps)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "week.csv"
        with path.open("w") as f:
            f.write("TIMESTAMP,ContextTokens,GeneratedTokens\n")
            for r in itertools.islice(week, n_synth // 2):
                h, rem = divmod(r.arrival_s, 3600.0)
                m, s = divmod(rem, 60.0)
                day = 10 + int(h) // 24
                f.write(
                    f"2024-05-{day:02d} {int(h) % 24:02d}:{int(m):02d}:{s:06.3f},"
                    f"{r.prompt_tokens},{r.output_tokens}\n"
                )
        big = AzureTrace(path)
        out["azure_2024_format_rps"] = round(best_rate(lambda: sum(1 for _ in big), repeats))
        print(f"2024-format CSV read: {out['azure_2024_format_rps']:,} req/s")

    tracemalloc.start()
    held = list(itertools.islice(week, 1_000_000))
    cur, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out["one_million_held_mib"] = round(cur / 2**20, 1)
    print(f"1M requests held in a list: {out['one_million_held_mib']} MiB")
    del held

    tracemalloc.start()
    for _ in itertools.islice(week, n_synth):
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out["streaming_peak_mib"] = round(peak / 2**20, 2)
    print(f"streaming {n_synth:,} requests: peak {out['streaming_peak_mib']} MiB")
    emit(out)


if __name__ == "__main__":
    main()
