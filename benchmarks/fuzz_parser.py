"""Coverage-guided fuzzing (atheris) of both faces' request-body paths.

    PYTHONPATH=src .venv/bin/python benchmarks/fuzz_parser.py [--quick] [--runs N]

The targets of `dualpool.testing.fuzz_targets`: the gateway's (bounded JSON parser,
Router: features, estimate, certain-refusal rule; the usage rewrite) and the
emulator's (vLLM's validation, token counting with the Llama-3 tokenizer), each from
the seed bodies and an OpenAI-schema dictionary, libFuzzer mutating with coverage
feedback from every loaded dualpool module. A body may only end in the face's own
400 family; anything else stops the run with the input saved. Target: 0 crashes at
>= 1,000,000 runs a target (quick: 100,000). Needs the `fuzz` extra (atheris).

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, emit

_DONE = re.compile(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/")


def run(target: str, runs: int, workdir: Path) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    t = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "dualpool.testing.fuzz_targets", target, f"-runs={runs}",
         "-max_len=8192", f"-artifact_prefix={workdir}/", "-print_final_stats=1"],
        cwd=workdir, env=env, capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.monotonic() - t
    crashes = sorted(p.name for p in workdir.glob(f"{target}*crash-*")) + sorted(
        p.name for p in workdir.glob("crash-*")
    )
    m = _DONE.search(proc.stderr)
    if proc.returncode != 0 or m is None:
        print(proc.stderr[-4000:], file=sys.stderr)
    print(f"{target}: {m.group(1) if m else '?'} runs, exit {proc.returncode}, "
          f"{seconds:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
    return {
        "runs": int(m.group(1)) if m else None,
        "coverage": int(m.group(2)) if m else None,
        "features": int(m.group(3)) if m else None,
        "corpus": int(m.group(4)) if m else None,
        "seconds": round(seconds, 1),
        "exec_per_s": round(int(m.group(1)) / seconds) if m else None,
        "exit": proc.returncode,
        "crashes": crashes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="100,000 runs a target")
    ap.add_argument("--runs", type=int, default=None, help="runs a target (1,000,000)")
    args = ap.parse_args()
    try:
        import atheris  # noqa: F401
    except ImportError:
        sys.exit("benchmarks/fuzz_parser.py needs atheris: pip install -e '.[fuzz]'")
    runs = args.runs or (100_000 if args.quick else 1_000_000)
    results = {}
    for target in ("gateway", "emulator"):
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as d:
            results[target] = run(target, runs, Path(d))
    ok = all(r["exit"] == 0 and not r["crashes"] and r["runs"] == runs for r in results.values())
    emit({
        "benchmark": "fuzz_parser", "quick": args.quick, "runs_per_target": runs,
        "targets": results, "load_avg_1m": os.getloadavg()[0], "pass": ok,
    })  # fmt: skip


if __name__ == "__main__":
    main()
