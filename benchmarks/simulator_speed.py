"""Simulator speed: simulated requests per second on one core, peak RSS, a peer.

    .venv/bin/python benchmarks/simulator_speed.py [--quick]

0. Two builds of the same sources, side by side: pure Python, and compiled
   with mypyc (the modules `make compile` builds, read from the Makefile),
   each a copy of src/ in a temporary folder; every measurement below runs
   in a child process per build, the builds alternating, so both see the
   same machine load. Without a C compiler only the pure build is measured.
1. Speed: the paper's two-pool fleet of Llama-3-70B on H100-80GB (each pool at
   the smallest TP its config fits), sized for 80% utilization (>= 100
   instances), fed azure-conv-like at 1,000 req/s. `requests_per_s` divides
   by the child's CPU time in `simulate` (one core; the machine may be
   shared, which inflates wall time), best of the rounds (three; one with
   --quick); it is the compiled build's when there is one.
2. Memory: a 1M-request synthetic run (100k with --quick) in a subprocess;
   peak RSS: the child's own resource.getrusage(RUSAGE_SELF).ru_maxrss.
3. A week of Azure 2024 (azure-2024-week, 44.1M requests): a 10-minute slice
   at the daily peak (2 minutes with --quick) is simulated and the week's time
   on two cores (two shard processes) is extrapolated from its per-core rate.
   The peak slice batches more than the average hour (fewer events per
   request), so this is optimistic; docs/simulator.md has the whole week, run.
4. Peer: vllm-sr-sim (pip, in a venv under /tmp/peer-venv) on the Azure CDF
   at 1,000 req/s with the same instance counts; null if it is not installed.

--baseline REV (a git revision, e.g. the commit before a change) builds the
same two builds of REV's src/ (with REV's Makefile list of compiled modules)
and measures them in the same alternating rounds of 1 and 3, so the
speed of the working tree is reported against REV's as ratios measured at
the same moment (`baseline_ratio_*`: this tree / REV, best rounds).

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, emit
from dualpool.simulator import SimOptions, dual_pool_fleet, simulate, size_fleet
from dualpool.workload import open_workload, window

PEER_PY = Path("/tmp/peer-venv/bin/python")
PEER_CLI = Path("/tmp/peer-venv/bin/vllm-sr-sim")
WEEK_REQUESTS = 44_100_000

_RSS_CHILD = """
import sys, json, resource, time
from dualpool.simulator import dual_pool_fleet, simulate, size_fleet
from dualpool.workload import preset
n = int(sys.argv[1])
w = preset("azure-conv-like", rate=1000.0, num_requests=n, seed=11)
fleet, _ = size_fleet(dual_pool_fleet("llama-3-70b", "h100-80gb"), w)
t = time.process_time()
s = simulate(fleet, w)
print(json.dumps({"requests": s.requests, "cpu_s": time.process_time() - t,
                  "instances": fleet.num_instances,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def speed(duration_s: float) -> dict[str, object]:
    w = open_workload("azure-conv-like", rate=1000.0, duration_s=duration_s, seed=1)
    fleet, _ = size_fleet(dual_pool_fleet("llama-3-70b", "h100-80gb"), w)
    c0, t0 = time.process_time(), time.perf_counter()
    s = simulate(fleet, w, SimOptions(seed=1))
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    return {
        "requests": s.requests,
        "instances": fleet.num_instances,
        "pools": {p.name: p.num_instances for p in fleet.pools},
        "tp": {p.name: p.engine.tensor_parallel_size for p in fleet.pools},
        "cpu_s": cpu,
        "wall_s": wall,
        "requests_per_s": s.requests / cpu,
        "requests_per_wall_s": s.requests / wall,
        "events_per_request": s.events / s.requests,
        "engine_steps_per_request": s.engine_steps / s.requests,
        "fast_forwards_per_request": s.fast_forwards / s.requests,
        "p99_ttft_s": s.fleet_stats().ttft.quantile(0.99),
    }


def export_rev(rev: str, dest: Path) -> Path:
    """`git archive` of REV's src/ and Makefile into dest (a source tree like REPO)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "src", "Makefile"], capture_output=True
    )
    if archive.returncode != 0:
        sys.exit(f"--baseline {rev}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def make_builds(root: Path, source: Path = REPO, prefix: str = "") -> dict[str, Path]:
    """{"interpreted": dir, "compiled": dir}: copies of src/ to put on PYTHONPATH."""
    builds: dict[str, Path] = {}
    ignore = shutil.ignore_patterns("*.so", "build", "__pycache__", ".mypy_cache")
    for name in ("interpreted", "compiled"):
        shutil.copytree(source / "src", root / f"{prefix}{name}", ignore=ignore)
    builds[f"{prefix}interpreted"] = root / f"{prefix}interpreted"
    m = re.search(r"^MYPYC_MODULES :=((?:.*\\\n)*.*)$", (source / "Makefile").read_text(), re.M)
    mypyc = Path(sys.executable).parent / "mypyc"
    if m is None or not mypyc.exists():
        print("no mypyc: measuring the interpreted build only", file=sys.stderr)
        return builds
    modules = m.group(1).replace("\\", " ").split()
    t0 = time.perf_counter()
    # Without PYTHONPATH: a src/ on it (as the worktree setup has) is a second copy of
    # the package for mypy, which then refuses the build ("found twice").
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [str(mypyc), *modules],
        cwd=root / f"{prefix}compiled",
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        err = (proc.stderr + proc.stdout)[-500:]
        print(f"mypyc failed, interpreted only: {err}", file=sys.stderr)
        return builds
    print(f"compiled {len(modules)} modules in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    builds[f"{prefix}compiled"] = root / f"{prefix}compiled"
    return builds


def in_child(build: Path, what: str, arg: float) -> dict[str, object]:
    """Run `what(arg)` of this file in a child process with `build` first on the path."""
    env = dict(os.environ, PYTHONPATH=str(build))
    proc = subprocess.run(
        [sys.executable, __file__, "--child", what, str(arg)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def peak_rss(n: int, build: Path | None = None) -> dict[str, object]:
    env = None if build is None else dict(os.environ, PYTHONPATH=str(build))
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(n)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    # The child's own peak: RUSAGE_CHILDREN would also count the mypyc build.
    rss_kb = child["maxrss_kb"]
    return {
        "rss_requests": child["requests"],
        "rss_run_cpu_s": child["cpu_s"],
        "rss_requests_per_s": child["requests"] / child["cpu_s"],
        "peak_rss_mb": rss_kb / 1024.0,
    }


def week_estimate(slice_s: float) -> dict[str, object]:
    # Peak hour of the diurnal cycle (14:00): the densest slice of the week.
    start = 14 * 3600.0
    full = open_workload("azure-2024-week", seed=2)
    w = window(full, start, start + slice_s)
    fleet, _ = size_fleet(dual_pool_fleet("llama-3-70b", "h100-80gb"), w)
    c0 = time.process_time()
    s = simulate(fleet, w)
    cpu = time.process_time() - c0
    rate = s.requests / cpu
    return {
        "week_slice_requests": s.requests,
        "week_slice_instances": fleet.num_instances,
        "week_slice_requests_per_s": rate,
        "week_estimated_minutes_on_2_cores": WEEK_REQUESTS / (2.0 * rate) / 60.0,
    }


def peer(n_req: int, n_short: int, n_long: int) -> dict[str, object]:
    if not PEER_CLI.exists():
        return {"peer_requests_per_s": None, "peer_note": "vllm-sr-sim not installed"}
    cdf = subprocess.run(
        [str(PEER_PY), "-c", "import fleet_sim, os; print(os.path.dirname(fleet_sim.__file__))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    args = [
        str(PEER_CLI), "simulate", "--cdf", f"{cdf}/data/azure_cdf.json", "--lam", "1000",
        "--gpu-short", "h100", "--gpu-long", "h100", "--n-s", str(n_short), "--n-l", str(n_long),
        "--n-req", str(n_req), "--seed", "1",
    ]  # fmt: skip
    t0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    if proc.returncode != 0:
        return {"peer_requests_per_s": None, "peer_note": proc.stderr.strip()[-300:]}
    return {
        "peer_requests_per_s": n_req / cpu,
        "peer_requests_per_wall_s": n_req / wall,
        "peer_requests": n_req,
        "peer_note": "vllm-sr-sim simulate, azure CDF, same instance counts as GPUs per pool; "
        "includes its start-up",
    }


def _best(runs: list[dict[str, object]], key: str) -> dict[str, object]:
    """The run with the highest `key` (the least disturbed by other load)."""
    return max(runs, key=lambda r: float(r[key]))  # type: ignore[arg-type]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller runs (a few minutes)")
    ap.add_argument("--baseline", metavar="REV", help="also measure git revision REV, side by side")
    ap.add_argument("--child", nargs=2, metavar=("WHAT", "ARG"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        fn = {"speed": speed, "week": week_estimate}[args.child[0]]
        print(json.dumps(fn(float(args.child[1]))))
        return
    q = args.quick
    rounds = 1 if q else 3
    out: dict[str, object] = {"quick": q}
    with tempfile.TemporaryDirectory(prefix="dualpool-bench-") as tmp:
        builds = make_builds(Path(tmp))
        if args.baseline:
            base_src = export_rev(args.baseline, Path(tmp) / "baseline-src")
            builds.update(make_builds(Path(tmp), base_src, "baseline-"))
            out["baseline"] = args.baseline
        speeds: dict[str, list[dict[str, object]]] = {b: [] for b in builds}
        weeks: dict[str, list[dict[str, object]]] = {b: [] for b in builds}
        for _ in range(rounds):
            for name, path in builds.items():
                sp = in_child(path, "speed", 10.0 if q else 60.0)
                print(f"speed {name}: {json.dumps(sp)}", file=sys.stderr)
                speeds[name].append(sp)
        for _ in range(rounds):
            for name, path in builds.items():
                wk = in_child(path, "week", 120.0 if q else 600.0)
                print(f"week slice {name}: {json.dumps(wk)}", file=sys.stderr)
                weeks[name].append(wk)
        main_build = "compiled" if "compiled" in builds else "interpreted"
        out["build"] = main_build
        out.update(_best(speeds[main_build], "requests_per_s"))
        out.update(_best(weeks[main_build], "week_slice_requests_per_s"))
        for name in builds:
            out[f"requests_per_s_{name}"] = _best(speeds[name], "requests_per_s")["requests_per_s"]
            out[f"requests_per_s_{name}_runs"] = [r["requests_per_s"] for r in speeds[name]]
            out[f"week_estimated_minutes_on_2_cores_{name}"] = _best(
                weeks[name], "week_slice_requests_per_s"
            )["week_estimated_minutes_on_2_cores"]
        if "compiled" in builds:
            out["compiled_speedup"] = float(out["requests_per_s_compiled"]) / float(  # type: ignore[arg-type]
                out["requests_per_s_interpreted"]  # type: ignore[arg-type]
            )
        for name in ("interpreted", "compiled"):
            if name in builds and f"baseline-{name}" in builds:
                for key, runs in (("requests_per_s", speeds), ("week_slice_requests_per_s", weeks)):
                    a = float(_best(runs[name], key)[key])  # type: ignore[arg-type]
                    b = float(_best(runs[f"baseline-{name}"], key)[key])  # type: ignore[arg-type]
                    out[f"baseline_ratio_{key}_{name}"] = a / b
        pools = out["pools"]
        assert isinstance(pools, dict)
        out.update(peer(20_000 if q else 100_000, pools["short"], pools["long"]))
        out.update(peak_rss(100_000 if q else 1_000_000, builds[main_build]))
    emit(out)


if __name__ == "__main__":
    main()
