"""Every `dualpool` command in README.md runs: the code blocks and the table.

Shortened where the command would run long: `simulate` gets `--duration 2`,
`plan` `--no-simulate`, `demo` `--requests 20`; `emulate` runs until its ready
line, then SIGTERM (exit 0); `serve` and `extproc` validate with `--check` (the example fleet's
backends are addresses of a real cluster); `bench` runs 5 requests against an
emulator started for it (on the URL the README names, if free, else another);
`traces fetch` either downloads or, offline as CI is, says so on one line.
Everything else runs as written.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    found: list[str] = []
    for block in re.findall(r"```(?:sh|bash|console)?\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("dualpool "):
                found.append(line)
    for span in re.findall(r"`(dualpool [^`]+)`", text):
        if len(span.split()) > 2:  # `dualpool serve` alone names the face, runs nothing
            found.append(span.strip())
    return list(dict.fromkeys(found))


def shortened(cmd: str) -> list[str]:
    argv = shlex.split(cmd)[1:]
    sub = argv[0]
    if sub == "simulate":
        if "--duration" in argv:
            i = argv.index("--duration")
            del argv[i : i + 2]
        argv += ["--duration", "2"]
    elif sub == "plan":
        argv += ["--no-simulate"]
    elif sub == "demo":
        argv += ["--requests", "20"]
    elif sub in ("serve", "extproc") and "--check" not in argv:
        argv.insert(1, "--check")
    elif sub == "emulate":
        argv += ["--port", "0", "--speedup", "50"]
    return argv


def test_the_readme_has_commands_for_every_face() -> None:
    subs = {shlex.split(c)[1] for c in readme_commands()}
    assert {"serve", "emulate", "simulate", "plan", "demo", "route"} <= subs


@pytest.mark.parametrize("cmd", readme_commands())
def test_readme_command_runs(cmd: str) -> None:
    argv = [sys.executable, "-m", "dualpool", *shortened(cmd)]
    env = {**os.environ, "DUALPOOL_API_KEY": "k1", "DUALPOOL_ADMIN_KEY": "k2"}
    if argv[3] == "emulate":
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready" and ready["ports"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        proc.stdout.close()
        return
    if argv[3] == "bench":
        _bench_against_an_emulator(argv, env)
        return
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    if argv[3:5] == ["traces", "fetch"] and done.returncode == 2:
        # No internet here: the one-line error a user mistake or an outage gets.
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in done.stderr
        return
    assert done.returncode == 0, f"{cmd}: {done.stderr[-2000:]}"


def _bench_against_an_emulator(argv: list[str], env: dict[str, str]) -> None:
    emu = [sys.executable, "-m", "dualpool", "emulate", "--model", "llama-3.1-8b"]
    emu += ["--gpu", "h100-80gb", "--port", "0", "--speedup", "50"]
    proc = subprocess.Popen(emu, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        port = ready["ports"][0]
        if "--url" in argv:
            argv[argv.index("--url") + 1] = f"http://127.0.0.1:{port}"
        argv += ["--num-requests", "5"]
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{argv}: {done.stderr[-2000:]}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        if proc.stdout is not None:
            proc.stdout.close()
