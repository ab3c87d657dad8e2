"""The lean install: `pip install dualpool` gives the gateway with few dependencies.

Runs deploy/install-gateway.sh, the Dockerfile's install steps, in a fresh venv
(pip's cache may serve the downloads): under 60 MB of site-packages, none of the
heavy packages, `dualpool serve` works, and the other faces name the extra they
need. The install's time is measured by benchmarks/lean_install.py (not asserted
here: tests check behaviour, not wall-clock).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "install-gateway.sh"

pytestmark = pytest.mark.slow


def _python() -> str:
    exe = shutil.which("python3.11")
    return exe or getattr(sys, "_base_executable", sys.executable)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def test_gateway_install_is_lean_fast_and_serves(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        pytest.skip(f"cannot build the wheel here (no index?): {built.stderr.strip()[-300:]}")
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHON"] = _python()
    t0 = time.monotonic()
    done = subprocess.run(
        ["sh", str(SCRIPT), str(venv), str(wheels), "redis"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    elapsed = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    site = next(venv.glob("lib/python3*/site-packages"))
    size_mb = _size(site) / 1e6
    print(f"lean install with the redis extra: {elapsed:.1f} s, site-packages {size_mb:.1f} MB")
    assert size_mb < 60, f"site-packages is {size_mb:.1f} MB"
    names = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    for heavy in ("numpy", "matplotlib", "tiktoken", "llama_models", "prometheus_client", "rich"):
        assert heavy not in names, f"{heavy} is installed by the lean install"
    bin_ = venv / "bin"
    assert subprocess.run([bin_ / "dualpool", "serve", "--help"], env=env).returncode == 0
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text(
        "pools:\n"
        "  - {name: short, endpoints: ['http://127.0.0.1:9'], max_model_len: 8192}\n"
        "  - {name: long, endpoints: ['http://127.0.0.1:10'], max_model_len: 32768}\n"
        "calibrator: {shared: 'redis://127.0.0.1:6379/0'}\n"
    )
    check = subprocess.run(
        [bin_ / "dualpool", "serve", "--check", "--config", cfg],
        capture_output=True,
        text=True,
        env=env,
    )
    assert check.returncode == 0, check.stderr
    # The gateway really serves there (uvloop, httptools, no numpy): a request is
    # routed, proxied to a fake vLLM and its usage learned.
    sys.path.insert(0, str(REPO / "tests" / "gateway"))
    from gw_helpers import FakeBackend

    short, long = FakeBackend(8192).start(), FakeBackend(32768).start()
    port = _free_port()
    lean_cfg = tmp_path / "lean.yaml"
    lean_cfg.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\nmodel: m\n"
        "pools:\n"
        f"  - {{name: short, endpoints: ['{short.url}'], max_model_len: 8192}}\n"
        f"  - {{name: long, endpoints: ['{long.url}'], max_model_len: 32768}}\n"
    )
    proc = subprocess.Popen([bin_ / "dualpool", "serve", "--config", lean_cfg], env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "serve did not start"
                time.sleep(0.1)
        body = b'{"model": "m", "messages": [{"role": "user", "content": "hi there"}]}'
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=body,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers["x-dualpool-pool"] == "short"
            assert b'"usage"' in r.read()
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
        short.kill()
        long.kill()
    route = subprocess.run(
        [bin_ / "dualpool", "route", "-"],
        input='{"model": "m", "messages": [{"role": "user", "content": "hello there"}]}',
        capture_output=True,
        text=True,
        env=env,
    )
    assert route.returncode == 0, route.stderr
    sim = subprocess.run(
        [bin_ / "dualpool", "simulate", "--rate", "10"], capture_output=True, text=True, env=env
    )
    assert sim.returncode == 2
    assert "pip install 'dualpool[simulate]'" in sim.stderr
    assert len(sim.stderr.strip().splitlines()) == 1, sim.stderr
