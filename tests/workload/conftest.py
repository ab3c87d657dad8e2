"""Fixtures for the workload tests: the shared data folder, skipping when absent."""

from __future__ import annotations

from pathlib import Path

import pytest
from wl_helpers import shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"shared data not found at {d} (set DUALPOOL_SHARED_DATA to its path)")
    return d


@pytest.fixture(scope="session")
def traces(shared_data: Path) -> Path:
    d = shared_data / "traces"
    if not d.is_dir():
        pytest.skip(f"shared traces not found at {d}")
    return d


@pytest.fixture(scope="session")
def cdfs(shared_data: Path) -> Path:
    d = shared_data / "cdf"
    if not d.is_dir():
        pytest.skip(f"shared CDFs not found at {d}")
    return d
