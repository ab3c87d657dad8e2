"""Instructions per proxied request through the gateway: a load-free measure.

    .venv/bin/python benchmarks/gateway_instructions.py [--quick] [--gateway-src A --gateway-src B]

Wall and CPU time on a shared machine move by 1.5x between minutes; executed
instructions do not. The gateway (`dualpool serve`, pure Python, in front of the
fixed backend `_backend.py`) runs under valgrind's callgrind while one keep-alive
connection sends N chat completions one after the other; (instructions(N2) -
instructions(N1)) / (N2 - N1) is the cost of one request without start-up,
imports and the drain. N1, N2 = 200, 1,200 (100, 500 with --quick). Each
`--gateway-src` (a src/ directory: another checkout) is measured the same way
behind the same backend, so two versions compare side by side. Needs valgrind;
without it the JSON says so. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, emit
from gateway_overhead import BODY, dualpool_cmd, free_port


def _request(port: int) -> bytes:
    body = json.dumps(BODY).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body)
    )


def _send(port: int, n: int) -> None:
    req = _request(port)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        f = s.makefile("rb")
        for _ in range(n):
            s.sendall(req)
            length = 0
            while True:
                line = f.readline()
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                if line in (b"\r\n", b""):
                    break
            f.read(length)


def _ready(port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            _send(port, 1)
            return True
        except OSError:
            time.sleep(1.0)
    return False


def _instructions(src: str, backend: str, n: int, tmp: Path) -> int:
    port = free_port()
    out = tmp / f"cg.{port}.out"
    cfg_dir = tmp / f"cfg{port}"
    cfg_dir.mkdir()
    cmd = dualpool_cmd(port, backend, cfg_dir)
    cfg = json.loads(Path(cmd[-1]).read_text())
    cfg["health"] = {"interval": 3600, "metrics_interval": 0}
    Path(cmd[-1]).write_text(json.dumps(cfg))
    env = dict(os.environ, PYTHONPATH=src, PYTHONHASHSEED="0")
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no"]
    proc = subprocess.Popen(vg + cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not _ready(port, proc, 600):
            raise RuntimeError(f"the gateway from {src} did not start under valgrind")
        _send(port, n - 1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = out.read_text(errors="replace")
    m = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    if m is None:
        raise RuntimeError("no instruction total in the callgrind output")
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gateway-src", action="append", default=[])
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        emit({"benchmark": "gateway_instructions", "error": "valgrind is not installed"})
        return
    n1, n2 = (100, 500) if args.quick else (200, 1200)
    srcs = args.gateway_src or [str(REPO / "src")]
    result: dict[str, object] = {"benchmark": "gateway_instructions", "n1": n1, "n2": n2}
    per: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        bport = free_port()
        backend = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("_backend.py")), "--port", str(bport)],
            stdout=subprocess.PIPE,
            env=dict(os.environ, PYTHONPATH=str(REPO / "src")),
        )
        try:
            assert backend.stdout is not None
            backend.stdout.readline()
            for src in srcs:
                a = _instructions(src, f"http://127.0.0.1:{bport}", n1, tmp)
                b = _instructions(src, f"http://127.0.0.1:{bport}", n2, tmp)
                per[src] = round((b - a) / (n2 - n1))
                print(f"{src}: {per[src]:,} instructions per request", file=sys.stderr)
        finally:
            with contextlib.suppress(ProcessLookupError):
                backend.kill()
            backend.wait()
    result["instructions_per_request"] = per
    if len(per) == 2:
        a, b = list(per.values())
        result["ratio_first_to_second"] = round(a / b, 3)
    emit(result)


if __name__ == "__main__":
    main()
