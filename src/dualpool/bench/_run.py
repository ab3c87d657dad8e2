"""The load generator: sends a workload to one or more endpoints and times every token.

    workload ─► Request ─► BodyMaker ─► Prepared ─┬─► arm A: Client ─► _Stream ─► RequestResult
                                                  └─► arm B: Client ─► _Stream ─► RequestResult
    open loop:   each request is sent at its arrival time / speedup (to every arm at once)
    closed loop: N users per arm, each sends its next request when the last one ends

One event loop, no task per request: a request is a `_Stream` handler whose
callbacks run inside the HTTP client's protocol callbacks, so each SSE message
is timestamped in the event-loop turn that reads it. Bounded: a count (the
workload's length), a sending window (`duration_s`), a per-request timeout and
a hard time limit (`max_time_s`); `stop()` (Ctrl-C) ends everything in flight
as `aborted` and returns what was measured.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from dualpool.bench._client import Client, Endpoint, Exchange, now
from dualpool.bench._metrics import RequestResult
from dualpool.bench._prompts import BodyMaker, Prepared
from dualpool.errors import ConfigError
from dualpool.workload import Request

__all__ = ["Arm", "ArmProgress", "RunOptions", "RunResult", "run_bench"]

_MAX_BODY = 1 << 20  # bytes of a non-streamed answer we keep


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How to send (see `dualpool bench --help` for the flags behind each field)."""

    mode: Literal["open", "closed"] = "open"
    # open loop: wall seconds = trace seconds / speedup
    speedup: float = 1.0
    # closed loop: users per arm
    users: int = 1
    # open loop: at most this many in flight per arm; the rest wait client-side
    max_concurrency: int | None = None
    # stop sending requests due after this many seconds (None: the whole workload)
    duration_s: float | None = None
    # hard limit on the whole run, seconds; what is still in flight is aborted
    max_time_s: float | None = None
    # a request still running after this long is ended as `timeout`
    request_timeout_s: float = 600.0
    stream: bool = True

    def __post_init__(self) -> None:
        if not self.speedup > 0:
            raise ConfigError("--speedup", f"must be > 0, got {self.speedup}")
        if self.mode == "closed" and self.users < 1:
            raise ConfigError("--users", f"must be >= 1, got {self.users}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ConfigError("--max-concurrency", f"must be >= 1, got {self.max_concurrency}")
        for flag, v in (
            ("--duration", self.duration_s),
            ("--max-time", self.max_time_s),
            ("--request-timeout", self.request_timeout_s),
        ):
            if v is not None and not v > 0:
                raise ConfigError(flag, f"must be > 0 seconds, got {v}")


@dataclass(slots=True)
class ArmProgress:
    """Live counters of one arm (read by the progress display)."""

    name: str
    sent: int = 0
    done: int = 0
    ok: int = 0
    failed: int = 0
    in_flight: int = 0
    waiting: int = 0


@dataclass(slots=True)
class RunResult:
    """What a run measured, per arm."""

    results: dict[str, list[RequestResult]]
    # per arm: seconds from the first send to the last answer (vLLM's duration)
    durations: dict[str, float]
    wall_s: float
    # the clock (time.perf_counter) at the start; start_s values are relative to it
    t0: float = 0.0
    # why it ended early ("" when it ran to the end): "interrupted", "max time"
    stopped: str = ""


class _Stream:
    """One request on one arm: parses the answer as it arrives (see _metrics' definitions)."""

    __slots__ = (
        "arm",
        "body",
        "buf",
        "exchange",
        "last",
        "r",
        "stream",
        "t_start",
    )

    def __init__(self, arm: Arm, r: RequestResult, stream: bool) -> None:
        self.arm = arm
        self.r = r
        self.stream = stream
        self.buf = b""
        self.body: list[bytes] = []
        self.t_start = 0.0
        self.last = 0.0
        self.exchange: Exchange | None = None

    # -- Handler -----------------------------------------------------------------
    def on_head(self, t: float, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.r.status = status
        for k, v in headers:
            if k == b"x-dualpool-pool":
                self.r.pool = v.decode("latin-1")

    def on_body(self, t: float, data: bytes) -> None:
        r = self.r
        if not self.stream or r.status != 200:
            if sum(map(len, self.body)) < _MAX_BODY:
                self.body.append(data)
            return
        buf = self.buf + data
        if b"\n\n" not in buf:
            self.buf = buf
            return
        *messages, self.buf = buf.split(b"\n\n")
        for msg in messages:
            msg = msg.strip()
            if not msg.startswith(b"data:"):
                continue  # SSE comments (":ping") and blank keep-alives
            payload = msg[5:].strip()
            if payload == b"[DONE]":
                continue
            if b'"choices":[{' in payload or b'"choices": [{' in payload:
                token = True
            elif b'"choices":[]' in payload or b'"choices": []' in payload:
                token = False
            else:  # another server's spacing: parse it
                try:
                    obj = json.loads(payload)
                except ValueError:
                    continue
                token = bool(isinstance(obj, dict) and obj.get("choices"))
            if token:
                if r.chunks == 0:
                    r.ttft_s = t - self.t_start
                else:
                    r.itl_s.append(t - self.last)
                r.chunks += 1
                self.last = t
            if b'"usage":{' in payload or b'"usage": {' in payload:
                self._usage(payload)

    def _usage(self, payload: bytes) -> None:
        try:
            usage = json.loads(payload).get("usage")
        except (ValueError, AttributeError):
            return
        if isinstance(usage, dict):
            pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if isinstance(pt, int):
                self.r.prompt_tokens = pt
            if isinstance(ct, int):
                self.r.completion_tokens = ct

    def on_complete(self, t: float) -> None:
        r = self.r
        if r.status != 200:
            self._fail(
                t,
                "http_4xx" if 400 <= r.status < 500 else "http_5xx",
                _error_message(r.status, b"".join(self.body)),
            )
            return
        if self.stream:
            if r.chunks == 0:
                self._fail(t, "no_token", "the stream ended without a token")
                return
            r.e2e_s = self.last - self.t_start
        else:
            r.e2e_s = r.ttft_s = t - self.t_start
            raw = b"".join(self.body)
            if b'"usage"' in raw:
                self._usage(raw)
            r.chunks = 1
        r.success = True
        self.arm._finished(self, t)

    def on_error(self, t: float, exc: BaseException) -> None:
        if isinstance(exc, ConnectionRefusedError) or (
            isinstance(exc, OSError) and self.r.status == 0 and not isinstance(exc, ConnectionError)
        ):
            kind = "connect"
        elif "malformed" in str(exc):
            kind = "protocol"
        else:
            kind = "reset"
        self._fail(t, kind, str(exc) or type(exc).__name__)

    def _fail(self, t: float, kind: str, message: str) -> None:
        r = self.r
        r.success = False
        r.error_kind = kind
        r.error = message[:300]
        r.e2e_s = t - self.t_start
        self.arm._finished(self, t)


def _error_message(status: int, body: bytes) -> str:
    try:
        obj = json.loads(body)
        msg = obj.get("error", {}).get("message") if isinstance(obj, dict) else None
        if isinstance(msg, str):
            return f"{status}: {msg}"
    except (ValueError, AttributeError):
        pass
    return f"{status}: {body[:200].decode('utf-8', 'replace')}"


class Arm:
    """One endpoint under test: its client, in-flight requests and results."""

    def __init__(self, name: str, endpoint: Endpoint, run: _Run) -> None:
        self.name = name
        self.endpoint = endpoint
        self.run = run
        self.client = Client(endpoint, run.loop)
        self.progress = ArmProgress(name)
        self.results: list[RequestResult] = []
        self.in_flight: set[_Stream] = set()
        self.waiting: collections.deque[tuple[float, int, Prepared]] = collections.deque()
        self.cursor = 0  # closed loop: the next request index
        self.users_active = run.o.users if run.o.mode == "closed" else 0
        self.last_done = 0.0

    def fire(self, index: int, p: Prepared, scheduled: float) -> None:
        run = self.run
        cap = run.o.max_concurrency
        if cap is not None and len(self.in_flight) >= cap:
            self.waiting.append((scheduled, index, p))
            self.progress.waiting = len(self.waiting)
            return
        self._send(index, p, scheduled)

    def _send(self, index: int, p: Prepared, scheduled: float) -> None:
        run = self.run
        r = RequestResult(
            index,
            self.name,
            p.category,
            p.prompt_tokens,
            p.output_tokens,
            scheduled,
        )
        s = _Stream(self, r, run.o.stream)
        self.in_flight.add(s)
        self.progress.sent += 1
        self.progress.in_flight = len(self.in_flight)
        t = now()
        s.t_start = t
        r.start_s = t - run.t0
        r.queue_s = max(0.0, r.start_s - scheduled) if run.o.max_concurrency else 0.0
        s.exchange = self.client.send(p.path, p.headers, p.body, s)

    def _finished(self, s: _Stream, t: float) -> None:
        if s not in self.in_flight:
            return
        self.in_flight.discard(s)
        self.results.append(s.r)
        self.last_done = t
        pr = self.progress
        pr.done += 1
        if s.r.success:
            pr.ok += 1
        else:
            pr.failed += 1
        pr.in_flight = len(self.in_flight)
        run = self.run
        if self.waiting and not run.stopping:
            scheduled, index, p = self.waiting.popleft()
            pr.waiting = len(self.waiting)
            self._send(index, p, scheduled)
        if run.o.mode == "closed" and not run.stopping:
            run.loop.call_soon(run.next_closed, self)
        run.check_done()

    def abort_all(self, kind: str, message: str) -> None:
        t = now()
        for s in list(self.in_flight):
            if s.exchange is not None:
                self.client.abort(s.exchange)
            s._fail(t, kind, message)
        while self.waiting:
            scheduled, index, p = self.waiting.popleft()
            r = RequestResult(index, self.name, p.category, p.prompt_tokens, p.output_tokens)
            r.scheduled_s = scheduled
            r.error_kind, r.error = kind, message
            self.results.append(r)
            self.progress.done += 1
            self.progress.failed += 1
        self.progress.waiting = 0

    def expire(self, timeout: float) -> None:
        t = now()
        for s in [s for s in self.in_flight if t - s.t_start > timeout]:
            if s.exchange is not None:
                self.client.abort(s.exchange)
            s._fail(t, "timeout", f"no complete answer within {timeout:g} s")


class _Run:
    def __init__(
        self,
        endpoints: Sequence[tuple[str, Endpoint]],
        requests: Iterable[Request],
        maker: BodyMaker,
        options: RunOptions,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.o = options
        self.loop = loop
        self.maker = maker
        self.arms = [Arm(name, ep, self) for name, ep in endpoints]
        self._requests: Iterator[tuple[int, Request]] = enumerate(requests)
        self.t0 = 0.0
        self.stopping = False
        self.stopped = ""
        self.dispatch_done = False
        self.done = asyncio.Event()
        # closed loop: prepared requests not yet taken by every arm
        self._prepared: dict[int, tuple[Prepared, int]] = {}
        self._exhausted_at: int | None = None
        # an error reading the workload, raised again by run_bench
        self.error: BaseException | None = None

    # -- common ------------------------------------------------------------------
    def make(self, i: int, req: Request) -> Prepared:
        return self.maker.make(
            i,
            req.prompt_tokens,
            req.output_tokens,
            req.max_tokens,
            req.category,
            req.body,
        )

    def check_done(self) -> None:
        if self.o.mode == "closed":
            if all(a.users_active <= 0 and not a.in_flight for a in self.arms):
                self.done.set()
        elif self.dispatch_done and all(not a.in_flight and not a.waiting for a in self.arms):
            self.done.set()

    def stop(self, why: str) -> None:
        """End the run now: nothing more is sent, what is in flight is aborted."""
        if self.stopping:
            return
        self.stopping = True
        self.stopped = why
        self.dispatch_done = True
        for arm in self.arms:
            arm.abort_all("aborted", f"run stopped ({why})")
        self.done.set()

    # -- open loop ---------------------------------------------------------------
    async def dispatch_open(self) -> None:
        o = self.o
        horizon = math.inf if o.duration_s is None else o.duration_s
        arms = self.arms
        try:
            for i, req in self._requests:
                due = req.arrival_s / o.speedup
                if due >= horizon or self.stopping:
                    break
                p = self.make(i, req)
                delay = self.t0 + due - now()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self.stopping:
                    break
                # Alternate which arm is written first, so neither is always second.
                if i & 1 and len(arms) > 1:
                    for arm in reversed(arms):
                        arm.fire(i, p, due)
                else:
                    for arm in arms:
                        arm.fire(i, p, due)
        except Exception as exc:  # a bad workload line: stop and report it
            self.error = exc
            self.stop("error")
        finally:
            self.dispatch_done = True
            self.check_done()

    # -- closed loop -------------------------------------------------------------
    def _past_duration(self) -> bool:
        d = self.o.duration_s
        return d is not None and now() - self.t0 >= d

    def _take(self, i: int) -> Prepared | None:
        """Request i, prepared once and shared by the arms (each takes it once)."""
        got = self._prepared.get(i)
        if got is None:
            if self._exhausted_at is not None:
                return None
            for j, req in self._requests:
                self._prepared[j] = (self.make(j, req), 0)
                if j == i:
                    break
            else:
                self._exhausted_at = i
                return None
            got = self._prepared[i]
        p, taken = got
        if taken + 1 >= len(self.arms):
            del self._prepared[i]
        else:
            self._prepared[i] = (p, taken + 1)
        return p

    def next_closed(self, arm: Arm) -> None:
        """A user of `arm` sends its next request, or retires when there is none."""
        try:
            p = None if self.stopping or self._past_duration() else self._take(arm.cursor)
        except Exception as exc:  # a bad workload line: stop and report it
            self.error = exc
            self.stop("error")
            return
        if p is None:
            arm.users_active -= 1
            self.check_done()
            return
        arm.cursor += 1
        arm.fire(arm.cursor - 1, p, now() - self.t0)

    # -- housekeeping --------------------------------------------------------------
    async def watch(self, progress: Callable[[list[ArmProgress], float], None] | None) -> None:
        o = self.o
        while not self.done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), 0.25)
            elapsed = now() - self.t0
            if o.max_time_s is not None and elapsed >= o.max_time_s:
                self.stop("max time")
            for arm in self.arms:
                arm.expire(o.request_timeout_s)
            if progress is not None:
                progress([a.progress for a in self.arms], elapsed)


async def run_bench(
    endpoints: Sequence[tuple[str, Endpoint]],
    requests: Iterable[Request],
    maker: BodyMaker,
    options: RunOptions,
    *,
    progress: Callable[[list[ArmProgress], float], None] | None = None,
    on_start: Callable[[Callable[[str], None]], None] | None = None,
) -> RunResult:
    """Replay `requests` against every endpoint (arm) at once; see the module doc.

    `on_start(stop)` receives the function that ends the run early (Ctrl-C).
    """
    loop = asyncio.get_running_loop()
    run = _Run(endpoints, requests, maker, options, loop)
    if on_start is not None:
        on_start(run.stop)
    run.t0 = now()
    watcher = loop.create_task(run.watch(progress))
    try:
        if options.mode == "open":
            dispatcher = loop.create_task(run.dispatch_open())
            await run.done.wait()
            if not dispatcher.done():
                dispatcher.cancel()
        else:
            for arm in run.arms:
                for _ in range(options.users):
                    run.next_closed(arm)
            run.check_done()
            await run.done.wait()
    finally:
        run.stopping = True
        for arm in run.arms:
            arm.abort_all("aborted", "run ended")
            arm.client.close()
        await asyncio.sleep(0)
        watcher.cancel()
    if run.error is not None:
        raise run.error
    if progress is not None:
        progress([a.progress for a in run.arms], now() - run.t0)
    wall = now() - run.t0
    return RunResult(
        results={a.name: sorted(a.results, key=lambda r: r.index) for a in run.arms},
        durations={a.name: (a.last_done - run.t0) if a.results else wall for a in run.arms},
        wall_s=wall,
        t0=run.t0,
        stopped=run.stopped,
    )


def models_of(body: bytes) -> list[str]:
    """Model ids from a /v1/models answer."""
    try:
        obj: Any = json.loads(body)
        return [m["id"] for m in obj["data"] if isinstance(m.get("id"), str)]
    except (ValueError, KeyError, TypeError):
        return []
