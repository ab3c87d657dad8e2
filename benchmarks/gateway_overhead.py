"""Overhead of the gateway in the request path, beside peer routers, in one run.

    .venv/bin/python benchmarks/gateway_overhead.py [--quick]

Setup (2 cores): the gateway under test is pinned to core 0, alone; the fixed
backend (`_backend.py`, not the emulator), the load generator (`wrk`, else a
Python one) and this script share core 1. For each router:

- added latency at 1 connection: p50 and p99 through it minus direct to the backend;
- max req/s through one process (64 connections);
- (dualpool) streaming time to first byte through it minus direct.

Peers (vllm-router, sglang-router, LiteLLM proxy) are run from a separate venv
(`--peers-venv`, default /tmp/peers) when installed there, offline
(HF_HUB_OFFLINE=1, LITELLM_LOCAL_MODEL_COST_MAP=True, proxies pointing at a
closed local port); otherwise null. The machine is shared: read the ratios
measured side by side, not the absolute numbers.

Last line: one JSON object with added_p50_ms, added_p99_ms, max_rps, direct_rps,
stream_ttfb_added_ms, peers {name: {added_p50_ms, max_rps}} and ratios.
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
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_seconds, emit, percentile

GATEWAY_CPU = "0"
LOAD_CPU = "1"
BODY = {
    "model": "bench-model",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {
            "role": "user",
            "content": "What is the capital of France, and what river runs through it? "
            "Please answer in one short sentence, plain text, without lists.",
        },
    ],
    "max_tokens": 64,
    "temperature": 0.0,
}
MASTER_KEY = "sk-bench-local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def offline_env() -> dict[str, str]:
    closed = free_port()  # nothing listens there: any outside call fails at once
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        HTTP_PROXY=f"http://127.0.0.1:{closed}",
        HTTPS_PROXY=f"http://127.0.0.1:{closed}",
        http_proxy=f"http://127.0.0.1:{closed}",
        https_proxy=f"http://127.0.0.1:{closed}",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        DISABLE_SCHEMA_UPDATE="True",
        LITELLM_TELEMETRY="False",
    )
    return env


@contextlib.contextmanager
def process(
    cmd: list[str], cpu: str, env: dict[str, str] | None = None, *, session: bool = True
) -> Iterator[subprocess.Popen[bytes]]:
    """`cmd` on core `cpu`, killed with its process group at the end. `session=False`:
    a new process group in this session (so in this session's CPU autogroup)."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finally, after the process
    proc = subprocess.Popen(
        ["taskset", "-c", cpu, *cmd],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=session,
        process_group=None if session else 0,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


def wait_ready(
    url: str, proc: subprocess.Popen[bytes], timeout: float, headers: dict[str, str] | None = None
) -> bool:
    """Until a chat completion POSTed to `url` answers 200."""
    deadline = time.time() + timeout
    data = json.dumps(BODY).encode()
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            req = urllib.request.Request(
                url + "/v1/chat/completions",
                data=data,
                headers={"content-type": "application/json", **(headers or {})},
            )
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(url: str, conns: int, seconds: float, headers: dict[str, str]) -> dict[str, float]:
    lua = "wrk.method = 'POST'\nwrk.body = [[" + json.dumps(BODY) + "]]\n"
    lua += "wrk.headers['Content-Type'] = 'application/json'\n"
    for k, v in headers.items():
        lua += f"wrk.headers['{k}'] = '{v}'\n"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
        script = f.name
    try:
        out = subprocess.run(
            [
                "taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s",
                "--latency", "-s", script, url + "/v1/chat/completions",
            ],
            capture_output=True, text=True, timeout=seconds + 60,
        ).stdout  # fmt: skip
    finally:
        os.unlink(script)
    res: dict[str, float] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else float("nan")
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}%\s+(\S+)", out, re.M)
        res[f"p{q}_ms"] = _ms(m.group(1)) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non2xx"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Socket errors:.*", out)
    res["socket_errors"] = 1.0 if m else 0.0
    return res


def python_load(url: str, conns: int, seconds: float, headers: dict[str, str]) -> dict[str, float]:
    """Fallback load generator: blocking keep-alive sockets in threads (coarser)."""
    import threading

    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(BODY).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    req = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body
    lat: list[float] = []
    stop = time.time() + seconds

    def worker() -> None:
        s = socket.create_connection((host, int(port)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")
        while time.time() < stop:
            t = time.perf_counter()
            s.sendall(req)
            n = 0
            while True:
                line = f.readline()
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":")[1])
                if line in (b"\r\n", b""):
                    break
            f.read(n)
            lat.append((time.perf_counter() - t) * 1000)
        s.close()

    threads = [threading.Thread(target=worker) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "rps": len(lat) / seconds,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "non2xx": 0.0,
        "socket_errors": 0.0,
    }


def stream_ttfb(url: str, n: int) -> float:
    """Median ms from sending a streaming request to its first body byte."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({**BODY, "stream": True}).encode()
    req = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times: list[float] = []
    for _ in range(n):
        t = time.perf_counter()
        s.sendall(req)
        buf = b""
        first = 0.0
        while b"0\r\n\r\n" not in buf:
            data = s.recv(65536)
            if not data:
                raise RuntimeError("stream closed early")
            buf += data
            if not first and b"data:" in buf:
                first = time.perf_counter()
        times.append((first - t) * 1000)
    s.close()
    return statistics.median(times)


def measure(
    url: str, args: argparse.Namespace, headers: dict[str, str], session: int | None = None
) -> dict[str, float]:
    load = run_wrk if shutil.which("wrk") and not args.python_load else python_load
    one = load(url, 1, args.latency_seconds, headers)
    cpu0 = cpu_seconds(session=session) if session else 0.0
    many = load(url, args.connections, args.throughput_seconds, headers)
    cpu = cpu_seconds(session=session) - cpu0 if session else float("nan")
    n = many["rps"] * args.throughput_seconds
    return {
        "p50_ms": one["p50_ms"],
        "p99_ms": one["p99_ms"],
        "rps": many["rps"],
        # CPU the router spent per request at full load: 1e6 / this bounds its req/s
        # on one core, and it is less sensitive to other jobs on the machine.
        "cpu_us_per_request": cpu / n * 1e6 if n else float("nan"),
        "errors": one["non2xx"] + many["non2xx"] + one["socket_errors"] + many["socket_errors"],
    }


def dualpool_cmd(port: int, backend: str, cfg_dir: Path) -> list[str]:
    cfg = {
        "listen": {"host": "127.0.0.1", "port": port},
        "model": "bench-model",
        "pools": [
            {
                "name": "short",
                "endpoints": [backend],
                "max_model_len": 8192,
                "max_concurrency": 1024,
            },
            {
                "name": "long",
                "endpoints": [backend],
                "max_model_len": 32768,
                "max_concurrency": 1024,
            },
        ],
        "log": {"level": "warning", "access": "debug"},
    }
    path = cfg_dir / "fleet.json.yaml"
    path.write_text(json.dumps(cfg))
    return [sys.executable, "-m", "dualpool", "serve", "--config", str(path)]


def peer_cmds(
    venv: Path, port: int, backend: str, cfg_dir: Path
) -> dict[str, tuple[list[str], dict[str, str]]]:
    bin_ = venv / "bin"
    out: dict[str, tuple[list[str], dict[str, str]]] = {}
    if (bin_ / "vllm-router").exists():
        out["vllm-router"] = (
            [str(bin_ / "vllm-router"), "--host", "127.0.0.1", "--port", str(port),
             "--worker-urls", backend, "--policy", "round_robin", "--log-level", "error"],
            {},
        )  # fmt: skip
    if (bin_ / "sglang-router").exists():
        out["sglang-router"] = (
            [str(bin_ / "python"), "-m", "sglang_router.launch_router", "--host", "127.0.0.1",
             "--port", str(port), "--worker-urls", backend, "--policy", "round_robin",
             "--log-level", "error"],
            {},
        )  # fmt: skip
    if (bin_ / "litellm").exists():
        cfg = cfg_dir / "litellm.yaml"
        cfg.write_text(
            "model_list:\n"
            "  - model_name: bench-model\n"
            "    litellm_params:\n"
            "      model: hosted_vllm/bench-model\n"
            f"      api_base: {backend}/v1\n"
            "      api_key: none\n"
            "general_settings:\n"
            f"  master_key: {MASTER_KEY}\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
            "  set_verbose: false\n"
        )
        out["litellm"] = (
            [str(bin_ / "litellm"), "--config", str(cfg), "--host", "127.0.0.1",
             "--port", str(port), "--num_workers", "1"],
            {"Authorization": f"Bearer {MASTER_KEY}"},
        )  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (about a minute)")
    ap.add_argument("--peers-venv", default="/tmp/peers", help="venv with the peer routers")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--python-load", action="store_true", help="use the Python load generator")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument(
        "--gateway-src",
        default="",
        help="PYTHONPATH for the gateway under test (e.g. another checkout's src/), "
        "to compare two versions behind the same backend and load",
    )
    args = ap.parse_args()
    args.latency_seconds = 2.0 if args.quick else 5.0
    args.throughput_seconds = 3.0 if args.quick else 8.0
    n_ttfb = 200 if args.quick else 1000
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    env = offline_env()
    result: dict[str, Any] = {
        "load_generator": "python" if args.python_load or not shutil.which("wrk") else "wrk"
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        bport = free_port()
        backend_url = f"http://127.0.0.1:{bport}"
        with process(
            [sys.executable, str(Path(__file__).with_name("_backend.py")), "--port", str(bport)],
            LOAD_CPU,
            env,
        ) as bproc:
            if not wait_ready(backend_url, bproc, 30):
                sys.exit("the fixed backend did not start")
            direct = measure(backend_url, args, {})
            direct_ttfb = stream_ttfb(backend_url, n_ttfb)
            print(f"direct: {direct}, stream ttfb {direct_ttfb:.3f} ms", file=sys.stderr)
            gport = free_port()
            genv = dict(env)
            if args.gateway_src:
                # Another checkout's gateway behind the same backend: side by side.
                genv["PYTHONPATH"] = args.gateway_src
            with process(dualpool_cmd(gport, backend_url, tmpdir), GATEWAY_CPU, genv) as gproc:
                gurl = f"http://127.0.0.1:{gport}"
                if not wait_ready(gurl, gproc, 60):
                    sys.exit("dualpool serve did not start")
                ours = measure(gurl, args, {}, gproc.pid)
                ttfb = stream_ttfb(gurl, n_ttfb)
            print(f"dualpool: {ours}, stream ttfb {ttfb:.3f} ms", file=sys.stderr)
            peers: dict[str, Any] = {}
            names = ("vllm-router", "sglang-router", "litellm")
            cmds = (
                {}
                if args.no_peers
                else peer_cmds(Path(args.peers_venv), free_port(), backend_url, tmpdir)
            )
            for name in names:
                if name not in cmds:
                    peers[name] = None
                    continue
                cmd, headers = cmds[name]
                port = int(cmd[cmd.index("--port") + 1])
                with process(cmd, GATEWAY_CPU, env) as pproc:
                    purl = f"http://127.0.0.1:{port}"
                    if not wait_ready(purl, pproc, 120, headers):
                        print(f"{name}: did not start; skipped", file=sys.stderr)
                        peers[name] = None
                        continue
                    res = measure(purl, args, headers, pproc.pid)
                print(f"{name}: {res}", file=sys.stderr)
                peers[name] = {
                    "added_p50_ms": round(res["p50_ms"] - direct["p50_ms"], 4),
                    "added_p99_ms": round(res["p99_ms"] - direct["p99_ms"], 4),
                    "max_rps": round(res["rps"], 1),
                    "cpu_us_per_request": round(res["cpu_us_per_request"], 1),
                    "errors": res["errors"],
                }
    result.update(
        added_p50_ms=round(ours["p50_ms"] - direct["p50_ms"], 4),
        added_p99_ms=round(ours["p99_ms"] - direct["p99_ms"], 4),
        max_rps=round(ours["rps"], 1),
        direct_rps=round(direct["rps"], 1),
        cpu_us_per_request=round(ours["cpu_us_per_request"], 1),
        direct_p50_ms=round(direct["p50_ms"], 4),
        stream_ttfb_added_ms=round(ttfb - direct_ttfb, 4),
        errors=ours["errors"],
        peers=peers,
        ratios={
            name: round(ours["rps"] / p["max_rps"], 2) if p and p["max_rps"] else None
            for name, p in peers.items()
        },
        quick=args.quick,
    )
    emit(result)


if __name__ == "__main__":
    main()
