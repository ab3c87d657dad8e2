"""Instructions per simulated request, pure Python and compiled: a load-free measure.

    .venv/bin/python benchmarks/simulator_instructions.py [--quick]

Wall and CPU time on a shared machine move by 1.5x between minutes; executed
instructions do not. For each build (pure Python and mypyc, the two copies of
the sources that `simulator_speed.py` builds), a child process simulates the
177-instance fleet of simulator_speed.py (sized once on 20 s of azure-conv-like
at 1,000 req/s) on T1 and T2 seconds of that traffic under valgrind's
callgrind; (instructions(T2) - instructions(T1)) / (requests(T2) -
requests(T1)) is the cost of one simulated request without start-up, imports
and sizing. T1, T2 = 3 s, 9 s (2 s, 5 s with --quick). --baseline REV also
measures the two builds of git revision REV and reports `baseline_ratio_*`
(REV's instructions / this tree's: above 1 means this tree is cheaper).
Needs valgrind; without it the JSON says so. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import emit
from simulator_speed import export_rev, make_builds

_CHILD = """
import json, sys
from dualpool.simulator import SimOptions, dual_pool_fleet, simulate, size_fleet
from dualpool.workload import open_workload
sizing = open_workload("azure-conv-like", rate=1000.0, duration_s=20, seed=1)
fleet, _ = size_fleet(dual_pool_fleet("llama-3-70b", "h100-80gb"), sizing)
w = open_workload("azure-conv-like", rate=1000.0, duration_s=float(sys.argv[1]), seed=1)
s = simulate(fleet, w, SimOptions(seed=1))
print(json.dumps({"requests": s.requests, "instances": fleet.num_instances}))
"""


def instructions(build: Path, seconds: float) -> tuple[int, int]:
    """(instructions executed, requests simulated) of one child under callgrind."""
    env = dict(os.environ, PYTHONPATH=str(build))
    proc = subprocess.run(
        [
            "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
            sys.executable, "-c", _CHILD, str(seconds),
        ],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    m = re.search(r"Collected : (\d+)", proc.stderr)
    if m is None:
        raise RuntimeError(f"no instruction count from callgrind: {proc.stderr[-500:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    return int(m.group(1)), int(child["requests"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs (about 3 minutes)")
    ap.add_argument("--baseline", metavar="REV", help="also measure git revision REV")
    args = ap.parse_args()
    t1, t2 = (2.0, 5.0) if args.quick else (3.0, 9.0)
    out: dict[str, object] = {"quick": args.quick, "seconds": [t1, t2]}
    if shutil.which("valgrind") is None:
        out["note"] = "valgrind not installed: no instruction counts"
        emit(out)
        return
    with tempfile.TemporaryDirectory(prefix="dualpool-bench-") as tmp:
        builds = make_builds(Path(tmp))
        if args.baseline:
            src = export_rev(args.baseline, Path(tmp) / "baseline-src")
            builds.update(make_builds(Path(tmp), src, "baseline-"))
            out["baseline"] = args.baseline
        for name, path in builds.items():
            i1, n1 = instructions(path, t1)
            i2, n2 = instructions(path, t2)
            per = (i2 - i1) / (n2 - n1)
            print(f"{name}: {per:,.0f} instructions per request", file=sys.stderr)
            out[f"instructions_per_request_{name}"] = per
    for name in ("interpreted", "compiled"):
        mine, base = (out.get(f"instructions_per_request_{p}{name}") for p in ("", "baseline-"))
        if mine is not None and base is not None:
            out[f"baseline_ratio_{name}"] = float(base) / float(mine)  # type: ignore[arg-type]
    if "instructions_per_request_compiled" in out:
        out["ratio"] = float(out["instructions_per_request_interpreted"]) / float(  # type: ignore[arg-type]
            out["instructions_per_request_compiled"]  # type: ignore[arg-type]
        )
    emit(out)


if __name__ == "__main__":
    main()
