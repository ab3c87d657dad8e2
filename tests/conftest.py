"""Shared test helpers: where ../shared/data is, and skipping when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    env = os.environ.get("DUALPOOL_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"shared data not found at {d} (set DUALPOOL_SHARED_DATA to its folder)")
    return d


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test stale compiled modules.

    `make compile` puts mypyc extensions next to their sources, and Python
    imports an extension before the .py beside it: after an edit, the tests
    would run the old code. Stop with what to do instead.
    """
    src = REPO / "src" / "dualpool"
    stale = [
        so.relative_to(REPO)
        for so in src.rglob("*.so")
        if (py := so.with_name(so.name.split(".", 1)[0] + ".py")).exists()
        and py.stat().st_mtime > so.stat().st_mtime
    ]
    if stale:
        pytest.exit(
            f"compiled modules older than their sources: {', '.join(map(str, stale))}; "
            "run `make compile` again, or `make uncompile` to test the pure-Python code",
            returncode=2,
        )
