"""Fuzz the gateway: hypothesis strategies over the OpenAI request schema and raw HTTP.

    PYTHONPATH=src .venv/bin/python benchmarks/fuzz.py [--quick]

A gateway in front of two emulators (short and long pool). Cases (strategies in
dualpool.testing.strategies): 90% POST bodies to /v1/chat/completions or
/v1/completions (schema-shaped with mistyped and hostile values, random bytes, deep
nesting, huge numbers) on a keep-alive connection; 10% whole raw HTTP requests
(methods, targets, versions, headers, wrong framing) on a fresh connection. Targets:
>= 100,000 cases (full), 0 answers 5xx from the gateway itself (501/505, the
protocol's answers to an unknown method or version, apart), gateway RSS growth
< 5% from 5% of the cases to the end.

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import sys
import time
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit
from _fleet import Fleet, rss_bytes
from dualpool.testing.strategies import raw_http, request_case


class Runner:
    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None
        self.statuses: Counter[int] = Counter()
        self.kinds: Counter[str] = Counter()
        self.five_xx: list[str] = []
        self.cases = 0

    def body(self, path: bytes, body: bytes) -> None:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.request("POST", path.decode(), body, {"content-type": "application/json"})
                r = self.conn.getresponse()
                data = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                self.record(r.status, data, body)
                return
            except (OSError, http.client.HTTPException) as exc:
                self.conn.close()
                self.conn = None
                if attempt:
                    self.kinds["no_answer"] += 1
                    self.note(f"no answer: {exc!r} to {body[:120]!r}")

    def raw(self, data: bytes) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server may answer (400/413/431) and close before reading it all
            chunks = []
            try:
                while True:
                    c = s.recv(65536)
                    if not c:
                        break
                    chunks.append(c)
            except OSError:
                pass
        answer = b"".join(chunks)
        if not answer:
            self.kinds["raw_closed_without_answer"] += 1
            return
        try:
            status = int(answer.split(b" ", 2)[1])
        except (IndexError, ValueError):
            self.kinds["raw_unparseable_answer"] += 1
            self.note(f"unparseable answer {answer[:80]!r}")
            return
        self.record(status, answer, data)

    def record(self, status: int, answer: bytes, sent: bytes) -> None:
        self.cases += 1
        self.statuses[status] += 1
        if status >= 500 and status not in (501, 505):
            self.note(f"{status}: {answer[-200:]!r} to {sent[:200]!r}")

    def note(self, text: str) -> None:
        if len(self.five_xx) < 20:
            self.five_xx.append(text)


def run(port: int, n: int, rng_seed: int, on_case: object = None) -> Runner:
    runner = Runner(port)
    cases = st.one_of(*([request_case()] * 9), raw_http().map(lambda b: (b"", b)))

    @seed(rng_seed)
    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(cases)
    def one(case: tuple[bytes, bytes]) -> None:
        path, data = case
        if path:
            runner.body(path, data)
        else:
            runner.raw(data)
        if callable(on_case):
            on_case(runner)

    one()
    return runner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3,000 cases")
    ap.add_argument("--cases", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n = args.cases or (3_000 if args.quick else 100_000)
    fleet = Fleet(n_short=1, n_long=1, speedup=1000.0).start()
    rss: dict[str, int] = {}
    t0 = time.monotonic()

    def on_case(r: Runner) -> None:
        total = r.cases + sum(r.kinds.values())
        if total == max(1, n // 20) and "warm" not in rss:
            rss["warm"] = rss_bytes(fleet.gateway_pid())
        if total % 10_000 == 0:
            print(f"{total} cases", file=sys.stderr, flush=True)

    try:
        runner = run(fleet.port, n, args.seed, on_case)
        rss["end"] = rss_bytes(fleet.gateway_pid())
        alive = fleet.gw_proc is not None and fleet.gw_proc.poll() is None
    finally:
        fleet.stop()
    elapsed = time.monotonic() - t0
    # 501/505 are the protocol's answers to an unknown method or HTTP version, not faults.
    five = sum(v for k, v in runner.statuses.items() if k >= 500 and k not in (501, 505))
    growth = (rss["end"] - rss["warm"]) / rss["warm"] if "warm" in rss else None
    emit(
        {
            "benchmark": "fuzz",
            "quick": args.quick,
            "cases": runner.cases + sum(runner.kinds.values()),
            "answered": runner.cases,
            "statuses": {str(k): v for k, v in sorted(runner.statuses.items())},
            "other": dict(runner.kinds),
            "http_5xx_own": five,
            "examples": runner.five_xx,
            "rss_warm_mb": round(rss.get("warm", 0) / 2**20, 1),
            "rss_end_mb": round(rss["end"] / 2**20, 1),
            "rss_growth": round(growth, 4) if growth is not None else None,
            "gateway_alive": alive,
            "seconds": round(elapsed, 1),
            "pass": five == 0 and alive and (growth is None or growth < 0.05),
        }
    )


if __name__ == "__main__":
    main()
