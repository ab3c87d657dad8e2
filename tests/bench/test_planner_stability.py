"""benchmarks/planner_stability.py's report: containment across precisions, pooled runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "planner_stability.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "benchmarks")]),
        },
        timeout=120,
    )


def test_rows_report_containment_by_precision_with_the_honest_count(tmp_path: Path) -> None:
    # Two default-precision plans 1 point apart with 2-point intervals (one from an earlier
    # run's output, one a row), and a 1-point plan 2.5 and 3.5 points away from them.
    earlier = {
        "workloads": {
            "w": {
                "plans": [
                    {"seed": 0, "precision": 0.02, "saving": 0.10, "half_width": 0.02,
                     "low": 0.08, "high": 0.12},
                ]
            }
        }
    }  # fmt: skip
    out = tmp_path / "earlier.out"
    out.write_text("a progress line\n" + json.dumps(earlier) + "\n")
    p = run("--combine", str(out), "--row", "w:1:0.02:0.11:0.02", "--row", "w:0:0.01:0.135:0.01")
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout.strip().splitlines()[-1])
    w = result["workloads"]["w"]
    c = w["containment"]
    assert c["2-2"] == {"contained": 2, "pairs": 2, "expected": 1.7}
    # 0.135 is outside [0.08, 0.12] and [0.09, 0.13]; 0.10 and 0.11 outside [0.125, 0.145].
    assert c["cross"]["contained"] == 0 and c["cross"]["pairs"] == 4
    assert c["all"]["pairs"] == 6
    # Honest intervals: a 2-point saving inside a 1-point interval P(|d| < 1) with sd
    # sqrt(5) / 1.96 -> 2 Phi(0.877) - 1 = 0.62; the other way 2 Phi(1.753) - 1 = 0.92.
    assert c["cross"]["expected"] == 3.1
    assert w["matrix"] == ["0@2: -x.", "1@2: x-.", "0@1: ..-"]
    assert w["pairs_contained"] == "2/6" and not w["target_met"]


def test_a_malformed_row_is_one_line_and_exit_2() -> None:
    p = run("--row", "w:1")
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "--row: expected WORKLOAD:SEED:PRECISION:SAVING:HALF_WIDTH, got 'w:1'"
    ]


def test_seeds_0_runs_no_default_precision_plan() -> None:
    # `--seeds 0` once ran five (0 read as "not given"); with no 1-point seed either,
    # there is nothing to run.
    p = run("--seeds", "0", "--fine-seed-list", "", "--workloads", "azure_2023_conv")
    assert p.returncode == 2
    assert "no plan to run" in p.stderr
