"""The gateway-only install: how long and how big, in a fresh venv.

    python benchmarks/lean_install.py [--quick] [--rounds N]

Builds the dualpool wheel once, then runs deploy/install-gateway.sh (the
Dockerfile's install steps: a fresh venv, the wheel with the redis extra) N times
in fresh directories, timing each (pip's cache serves the downloads after the
first). Reports the median and the best time, and site-packages' size with and
without the venv's own pip/setuptools. Targets: under 30 s, under 60 MB. Last
line: one JSON object.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, emit

TOOLING = ("pip", "setuptools", "pkg_resources", "_distutils_hack")


def size_mb(site: Path, skip: tuple[str, ...] = ()) -> float:
    total = 0
    for top in site.iterdir():
        name = top.name.split("-")[0]
        if name in skip:
            continue
        files = [top] if top.is_file() else [f for f in top.rglob("*") if f.is_file()]
        total += sum(f.stat().st_size for f in files if not f.is_symlink())
    return total / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one round")
    ap.add_argument("--rounds", type=int, default=3, help="installs timed (default 3)")
    args = ap.parse_args()
    rounds = 1 if args.quick else args.rounds
    python = shutil.which("python3.11") or sys.executable
    work = Path(tempfile.mkdtemp(prefix="dualpool-lean-"))
    wheels = work / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
    )
    times: list[float] = []
    sizes: tuple[float, float] = (0.0, 0.0)
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "PYTHON": python, "HOME": str(Path.home())}
    for i in range(rounds):
        venv = work / f"venv{i}"
        t0 = time.monotonic()
        subprocess.run(
            ["sh", str(REPO / "deploy" / "install-gateway.sh"), str(venv), str(wheels), "redis"],
            check=True,
            env=env,
        )
        times.append(time.monotonic() - t0)
        site = next(venv.glob("lib/python3*/site-packages"))
        sizes = (size_mb(site), size_mb(site, TOOLING))
        print(f"round {i + 1}: {times[-1]:.1f} s, site-packages {sizes[0]:.1f} MB", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    emit(
        {
            "benchmark": "lean_install",
            "rounds": rounds,
            "install_s_median": round(statistics.median(times), 2),
            "install_s_best": round(min(times), 2),
            "site_packages_mb": round(sizes[0], 1),
            "site_packages_mb_without_pip_setuptools": round(sizes[1], 1),
            "targets_met": statistics.median(times) < 30 and sizes[0] < 60,
        }
    )


if __name__ == "__main__":
    main()
