"""Helpers for the workload tests (a unique module name: tests/ has no packages)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_data_dir() -> Path:
    """`$DUALPOOL_SHARED_DATA`, else `../shared/data` next to the repo."""
    env = os.environ.get("DUALPOOL_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def need(path: Path) -> Path:
    """Skip the test when a shared file is missing."""
    if not path.is_file():
        pytest.skip(f"shared data file {path} is absent")
    return path
