"""Helpers shared by the benchmarks: data location, percentiles, the JSON last line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    env = os.environ.get("DUALPOOL_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def require_data(relative: str) -> Path:
    path = shared_data_dir() / relative
    if not path.exists():
        sys.exit(f"benchmark needs {path} (set DUALPOOL_SHARED_DATA to the shared data folder)")
    return path


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def cpu_seconds(*, pid: int | None = None, pgrp: int | None = None,
                session: int | None = None) -> float:  # fmt: skip
    """User + system CPU seconds from /proc: of one process (`pid`), or of every process
    in a process group (`pgrp`) or a session (`session`)."""
    field, wanted = (2, pgrp) if pgrp is not None else (3, session)
    entries = [str(pid)] if pid is not None else [e for e in os.listdir("/proc") if e.isdigit()]
    ticks = 0
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if pid is not None or int(fields[field]) == wanted:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def emit(result: dict[str, Any]) -> None:
    """Print the result as one JSON object on the last line."""
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
