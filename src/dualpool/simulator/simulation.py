"""The discrete-event fleet simulation: route, queue, step, complete.

    workload ──► Router (estimator + policy, calibrated online) ──► pool
                   ▲                                                │ Balancer
                   │ usage (prompt, completion tokens)              ▼
                   └──────────────────────── instance (engine Scheduler)

Event order is one key, (time, kind, seq): at equal times arrivals (kind 0)
come before instance step boundaries (kind 1), so a step starting exactly at
an arrival includes it; `seq` is a per-simulation counter. Arrivals are read
lazily from the workload stream (never all in memory); the heap holds at most
one event per busy instance.

An instance is in one of three modes:

    IDLE   no requests; no event. An arrival plans its first step.
    STEP   a step() was applied eagerly at t0; its boundary event is at t0 + dt.
           Requests arriving meanwhile join the waiting queue; the next
           schedule() (at the boundary) sees them, as in vLLM.
    RUN    a decode-only run was *planned* at t0 (peek_fast_forward) up to the
           next completion or KV-allocation failure; its event is at the run's
           end. Nothing is applied until the run ends, or until a request
           arrives for this instance: then fast_forward(t0, until_time=t_arrival)
           applies only the steps that started before the arrival.

So an instance is touched only when something happens to it (an arrival
routed to it, its own step boundary, a completion), never on other
instances' events: the cost of a simulation grows with arrivals, admissions,
preemptions and completions, not with generated tokens or the fleet size.

The balancer and the spillover signal read each instance's state at its last
touch (during a decode run: its start), a close approximation of what a
gateway scraping /metrics sees.

A request the engine rejects as over-length (its estimate was too low) is
retried once on the next larger pool and counted as misrouted, as the gateway
does; if no larger pool exists or it refuses too, the request is rejected.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterable
from heapq import heappop, heappush
from typing import Any, Final

from dualpool.budget import EstimatorConfig, RequestFeatures
from dualpool.engine import Request as EngineRequest
from dualpool.engine import RequestStatus, Scheduler
from dualpool.errors import ConfigError, WorkloadError
from dualpool.fleet import misroute_target, over_limits
from dualpool.policy import PoolPolicy, PoolSignal, ThresholdController
from dualpool.router import RoutedRequest, Router
from dualpool.simulator.balancer import Balancer, BalancerKind, make_balancer, parse_balancer
from dualpool.simulator.fleet import FleetConfig
from dualpool.simulator.options import SimOptions
from dualpool.simulator.records import RecordSink
from dualpool.simulator.summary import PoolStats, Summary
from dualpool.workload import Request, WithPromptBytes

__all__ = ["SimOptions", "Simulation", "simulate"]

# Final: compiled, these are C constants, not module-dict lookups.
_IDLE: Final = 0
_STEP: Final = 1
_RUN: Final = 2

# Workload categories -> the estimator's content classes.
_CLASS_OF: dict[str, str] = {
    "prose": "prose",
    "code": "code",
    "cjk": "zh",
    "zh": "zh",
    "ja": "ja",
    "ko": "ko",
    "json": "json",
    "other": "other",
}


def _route_features(r: Request, nbytes: int | None, model: str) -> RequestFeatures:
    """The estimator's inputs for a request known only by lengths and bytes.

    No body is fabricated: the byte count (synthetic for length-only traces),
    content class, message count and declared max_tokens are what the gateway
    would read from a real body.
    """
    cls = _CLASS_OF.get(r.category, "other") if r.category else "prose"
    return RequestFeatures(model, cls, nbytes or 0, 0, r.num_messages, 0, 0, r.max_tokens)


class _Instance:
    """One engine instance and the simulator's bookkeeping around it."""

    __slots__ = (
        "busy_s",
        "index",
        "kv_t",
        "kv_usage_last",
        "kv_usage_s",
        "max_len",
        "mode",
        "p",
        "pool",
        "sched",
        "t0",
        "used_blocks",
        "version",
        "waiting",
    )

    def __init__(self, pool: int, index: int, sched: Scheduler) -> None:
        self.pool = pool
        self.p: _Pool  # set when its pool is built
        self.index = index
        self.sched = sched
        self.max_len = sched.config.max_model_len
        self.mode = _IDLE
        self.t0 = 0.0
        self.version = 0
        self.busy_s = 0.0
        # KV usage integral: usage at the last touch, since kv_t.
        self.kv_usage_last = 0.0
        self.kv_t = 0.0
        self.kv_usage_s = 0.0
        # This instance's contribution to its pool's aggregates.
        self.waiting = 0
        self.used_blocks = 0

    @property
    def outstanding(self) -> int:
        return len(self.sched.requests)

    @property
    def kv_usage(self) -> float:
        return self.kv_usage_last


class _Pool:
    __slots__ = (
        "balancer",
        "instances",
        "name",
        "stats",
        "total_blocks",
        "used_blocks",
        "waiting",
    )

    def __init__(self, name: str, instances: list[_Instance], balancer: Balancer) -> None:
        self.name = name
        self.instances = instances
        self.balancer = balancer
        self.waiting = 0
        self.used_blocks = 0
        self.total_blocks = sum(i.sched.kv.num_gpu_blocks for i in instances)
        self.stats: PoolStats


# True when this module runs compiled (`make compile`): an extension's __file__
# is not a .py file.
_COMPILED: Final = not __file__.endswith(".py")


class _Event:
    """An entry of the event heap in the compiled build: (t, seq) order."""

    __slots__ = ("inst", "seq", "t", "version")

    def __init__(self, t: float, seq: int, inst: _Instance, version: int) -> None:
        self.t = t
        self.seq = seq
        self.inst = inst
        self.version = version

    def __lt__(self, other: _Event) -> bool:
        return self.t < other.t or (self.t == other.t and self.seq < other.seq)


class _EventHeap:
    """The instances' step boundaries, earliest first: (time, seq) order, seq
    counting pushes. An entry whose version is not its instance's any more is
    stale; the loop skips it.

    Two entry types, one order. Compiled, an `_Event`: heapq calls its native
    `__lt__`, several times cheaper than comparing tuples element by element.
    Interpreted, a tuple (t, seq, instance, version): its comparison runs in C,
    where a Python `__lt__` would not. Measured on the benchmark's fleet, either
    type used for both builds cost the other ~8.5% of its instructions per
    request (docs/simulator.md, Speed).
    """

    __slots__ = ("heap", "seq")

    def __init__(self) -> None:
        self.heap: list[Any] = []  # _Event compiled, the tuple interpreted
        self.seq = 0

    def push(self, t: float, inst: _Instance) -> None:
        self.seq += 1
        if _COMPILED:
            heappush(self.heap, _Event(t, self.seq, inst, inst.version))
        else:
            heappush(self.heap, (t, self.seq, inst, inst.version))

    def top_time(self) -> float:
        if _COMPILED:
            top: _Event = self.heap[0]
            return top.t
        t: float = self.heap[0][0]
        return t

    def pop(self) -> tuple[float, int, _Instance, int]:
        if _COMPILED:
            ev: _Event = heappop(self.heap)
            return ev.t, ev.seq, ev.inst, ev.version
        entry: tuple[float, int, _Instance, int] = heappop(self.heap)
        return entry


_NO_BLOCK: tuple[list[Request], list[int | None]] = ([], [])

# Per in-flight request: (workload request, routed, pool, instance, misrouted, spilled, counted)
_Meta = tuple[Request, RoutedRequest, int, int, bool, bool, bool]


class Simulation:
    """One simulation of a fleet; `run(requests)` returns its `Summary`.

    Deterministic: the same fleet, options and request stream give the same
    summary. Not reusable: build a new one per run.
    """

    def __init__(
        self,
        fleet: FleetConfig,
        options: SimOptions | None = None,
        *,
        records: RecordSink | None = None,
        progress: Callable[[int, float], None] | None = None,
    ) -> None:
        if not fleet.is_sized:
            raise ConfigError("instances", "every pool needs an instance count (size the fleet)")
        self.fleet = fleet
        self.options = opts = options or SimOptions()
        self.records = records
        self.progress = progress
        self.policy = PoolPolicy(fleet.pool_specs, spillover=opts.spillover)
        self.router = Router(self.policy, opts.estimator or EstimatorConfig(), opts.adaptive)
        kind = parse_balancer(opts.balancer)
        self.pools: list[_Pool] = []
        self.instances: list[_Instance] = []
        for pi, pc in enumerate(fleet.pools):
            insts: list[_Instance] = []
            for j in range(pc.num_instances):
                sched = Scheduler.from_specs(fleet.model, fleet.gpu, pc.engine, fleet.step_params)
                sched.list_decode_members = False  # only counts are read from a step
                inst = _Instance(pi, j, sched)
                insts.append(inst)
                self.instances.append(inst)
            pool = _Pool(pc.name, insts, make_balancer(kind, insts))
            for inst in insts:
                inst.p = pool
            pool.stats = PoolStats(pc.name, pc.num_instances, pc.gpus_per_instance)
            self.pools.append(pool)
        self._model_name = fleet.model.name
        self._events = _EventHeap()
        self._meta: dict[EngineRequest, _Meta] = {}
        self._next_id = 0
        self._t_first: float | None = None
        self._t_last_arrival = 0.0
        self._t_end = 0.0
        self._warmup_until = -math.inf
        self.summary = Summary(fleet.describe(), opts.slo, {p.name: p.stats for p in self.pools})
        self._balancer_is_rr = kind is BalancerKind.ROUND_ROBIN
        self._calibrator = self.router.estimator.calibrator
        # Read per request: plain attributes (SimOptions and SLO are frozen).
        self._spillover = opts.spillover
        self._slo_ttft = opts.slo.ttft_s
        self._slo_tpot = opts.slo.tpot_s
        # The adaptive threshold (None: static). Its signals: each pool's queue and
        # KV use as a gateway scrapes them, and a decayed SLO attainment.
        self.controller: ThresholdController | None = self.router.controller
        self.threshold_log: list[tuple[float, int]] = []
        self._slo_n = [0.0] * len(self.pools)
        self._slo_good = [0.0] * len(self.pools)
        self._slo_t = [0.0] * len(self.pools)
        self._tpot_s1 = [0.0] * len(self.pools)
        self._tpot_s2 = [0.0] * len(self.pools)
        # The attainment's memory: a few controller intervals (time-decayed, so a
        # pool serving few requests does not average over hours).
        self._slo_tau = 3.0 * opts.adaptive.interval_s if opts.adaptive is not None else 1.0
        if self.controller is not None:
            self.threshold_log.append((0.0, self.policy.threshold(0)))

    # -- the loop -------------------------------------------------------------------

    def run(self, requests: Iterable[Request]) -> Summary:
        """Simulate every request of the stream to completion; returns the summary."""
        # The loop allocates millions of short-lived objects (events, requests,
        # results) and none of them in reference cycles, so the cyclic garbage
        # collector's passes, triggered by allocation counts, find nothing to
        # free and cost ~15% of the run (its full passes traverse every live
        # object). It is paused for the run and restored after; what is cyclic
        # (the fleet's own structure) is bounded by the fleet's size.
        # tests/simulator/test_sim_simulation.py checks no per-request object is cyclic.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._run(requests)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _run(self, requests: Iterable[Request]) -> Summary:
        wall0 = time.perf_counter()
        opts = self.options
        # Blocks of (requests, prompt bytes): the bytes are synthesized for
        # length-only records without copying each record (see WithPromptBytes);
        # synthetic sources hand over whole generated blocks (Workload.iter_blocks).
        blocks = WithPromptBytes(
            requests, opts.bytes_per_token, jitter=opts.bytes_jitter, seed=opts.seed
        ).iter_blocks_with_bytes()
        events_q = self._events
        heap = events_q.heap  # only read for emptiness here
        block, block_bytes = next(blocks, _NO_BLOCK)
        bi = 0
        n_block = len(block)
        arrivals = 0
        progress = self.progress
        events = 0
        while True:
            if bi == n_block:
                # The block is used up. An empty one means the stream is: blocks
                # are never empty (Workload.iter_blocks' contract).
                if not n_block:
                    if not heap:
                        break
                else:
                    block, block_bytes = next(blocks, _NO_BLOCK)
                    bi = 0
                    n_block = len(block)
                    continue
            events += 1
            if bi < n_block:
                nxt = block[bi]
                if not heap or nxt.arrival_s <= events_q.top_time():
                    self._arrive(nxt, block_bytes[bi])
                    bi += 1
                    arrivals += 1
                    if progress is not None and arrivals % 8192 == 0:
                        progress(arrivals, nxt.arrival_s)
                    continue
            t, _, inst, ver = events_q.pop()
            if ver != inst.version:
                events -= 1
                continue
            self._boundary(inst, t)
        if progress is not None:
            progress(arrivals, self._t_end)
        s = self.summary
        if self._t_first is not None:
            s.window_s = self._t_last_arrival - self._t_first
            s.span_s = max(self._t_end, self._t_last_arrival) - self._t_first
            end = max(self._t_end, self._t_last_arrival)
            for inst in self.instances:
                inst.kv_usage_s += inst.kv_usage_last * (end - inst.kv_t)
                inst.kv_t = end
        for p in self.pools:
            p.stats.busy_s = sum(i.busy_s for i in p.instances)
            p.stats.kv_usage_s = sum(i.kv_usage_s for i in p.instances)
        s.events = events
        s.wall_s = time.perf_counter() - wall0
        if self.records is not None:
            self.records.flush()
        return s

    def _push(self, t: float, inst: _Instance) -> None:
        self._events.push(t, inst)

    def _boundary(self, inst: _Instance, t: float) -> None:
        """Instance `inst` reached the end of its step or decode run at t."""
        if inst.mode == _RUN:
            # fast_forward(t0) then peek_fast_forward at its end, in one call.
            ff, k, end = inst.sched.finish_run(inst.t0)
            self.summary.fast_forwards += 1
            inst.busy_s += ff.now - inst.t0
            for req in ff.finished:
                self._finished(req)
            self._plan(inst, ff.now, k, end)
        else:
            self._plan(inst, t)

    def _plan(self, inst: _Instance, now: float, k: int = -1, end: float = 0.0) -> None:
        """Start the instance's next step (or decode run) at `now`.

        k, end: `peek_fast_forward(now)` when the caller has it (k >= 0).
        """
        s = inst.sched
        inst.version += 1
        if not s.requests:
            inst.mode = _IDLE
            self._sync(inst, now)
            if now > self._t_end:
                self._t_end = now
            return
        if k < 0:
            k, end = s.peek_fast_forward(now)
        if k > 0:
            inst.mode = _RUN
            inst.t0 = now
            self._push(end, inst)
        else:
            out, res = s.step(now)
            self.summary.engine_steps += 1
            if out.num_scheduled_seqs == 0:
                raise RuntimeError(
                    f"instance {inst.pool}/{inst.index} scheduled nothing with "
                    f"{len(s.requests)} requests (engine model bug)"
                )
            inst.busy_s += res.now - now
            for req in res.finished:
                self._finished(req)
            inst.mode = _STEP
            inst.t0 = now
            self._push(res.now, inst)
        self._sync(inst, now)

    def _sync(self, inst: _Instance, now: float) -> None:
        """Refresh the instance's load in its pool's aggregates and balancer."""
        s = inst.sched
        kv = s.kv
        kv_t = inst.kv_t
        if now > kv_t:
            inst.kv_usage_s += inst.kv_usage_last * (now - kv_t)
            inst.kv_t = now
        total = kv.num_gpu_blocks
        used = total - kv.num_free_blocks
        inst.kv_usage_last = usage = used / total
        pool = inst.p
        w = len(s.waiting)
        if w != inst.waiting:
            pool.waiting += w - inst.waiting
            inst.waiting = w
        if used != inst.used_blocks:
            pool.used_blocks += used - inst.used_blocks
            inst.used_blocks = used
        if not self._balancer_is_rr:
            pool.balancer.update_load(inst.index, len(s.requests), usage)

    # -- arrivals -------------------------------------------------------------------

    def _saturation(self) -> list[bool]:
        opts = self.options
        out = []
        for p in self.pools:
            # The fleet's one rule, on the pool's mean queue per instance and KV use.
            out.append(
                over_limits(
                    p.waiting / len(p.instances),
                    p.used_blocks / p.total_blocks,
                    opts.saturation_waiting,
                    opts.saturation_kv,
                )
            )
        return out

    def _route(self, r: Request, nbytes: int | None) -> RoutedRequest:
        saturated = self._saturation() if self._spillover else None
        ctl = self.controller
        if ctl is not None and r.arrival_s >= ctl.next_update:
            self._adapt(ctl, r.arrival_s)
        if r.body is not None:
            return self.router.route(r.body, saturated=saturated)
        return self.router.route_features(
            _route_features(r, nbytes, self._model_name), saturated=saturated
        )

    def _adapt(self, ctl: ThresholdController, now: float) -> None:
        """One controller update from the pools' state now (short pool and the next)."""
        signals: list[PoolSignal] = []
        for i in (0, 1):
            p = self.pools[i]
            n = self._slo_n[i]
            slots = 0
            running = 0
            for inst in p.instances:
                slots += inst.sched.config.max_num_seqs
                running += len(inst.sched.running)
            signals.append(
                PoolSignal(
                    now,
                    p.waiting / len(p.instances),
                    p.used_blocks / p.total_blocks,
                    self._slo_good[i] / n if n >= 10.0 else None,
                    running / slots,
                    self._tpot_tail(i),
                )
            )
        before = ctl.threshold
        t = self.router.adapt(now, signals[0], signals[1])
        if t != before:
            self.threshold_log.append((now, t))

    def _tpot_tail(self, i: int) -> float | None:
        """Pool i's recent tail TPOT over the target: (mean + 2.33 sd) / target."""
        n = self._slo_n[i]
        if n < 10.0:
            return None
        m = self._tpot_s1[i] / n
        var = max(0.0, self._tpot_s2[i] / n - m * m)
        return (m + 2.33 * math.sqrt(var)) / self._slo_tpot

    def _arrive(self, r: Request, nbytes: int | None) -> None:
        now = r.arrival_s
        if self._t_first is None:
            self._t_first = now
            self._warmup_until = now + self.options.warmup_s
        if now < self._t_last_arrival:
            raise WorkloadError(
                f"arrivals must be in time order; got {now} after {self._t_last_arrival}"
            )
        self._t_last_arrival = now
        if r.prompt_tokens < 0 or r.output_tokens < 0:
            raise WorkloadError(
                "the simulator needs true token counts; this workload has requests without "
                "them (JSONL without usage): fill them first (workload.fill_tokens)"
            )
        summary = self.summary
        counted = now >= self._warmup_until
        if counted:
            summary.requests += 1
        else:
            summary.warmup_requests += 1
        routed = self._route(r, nbytes)
        dec = routed.decision
        if dec.pool < 0:
            if counted:
                summary.rejected_by_policy += 1
            self._record(r, -1, -1, None, True, False, False)
            return
        spilled = dec.pool != dec.home
        pool = dec.pool
        req, inst = self._submit(r, pool, now)
        misrouted = False
        if req.status == RequestStatus.FINISHED_REJECTED:
            target = misroute_target(self.policy.fallbacks(dec), False)
            if target >= 0:
                misrouted = True
                self._resume(inst, now)
                pool = target
                req, inst = self._submit(r, pool, now)
        stats = self.pools[pool].stats
        if counted:
            stats.requests += 1
            stats.misrouted += misrouted
            stats.spilled += spilled
        if req.status == RequestStatus.FINISHED_REJECTED:
            if counted:
                stats.rejected += 1
            self._record(r, pool, inst.index, None, True, misrouted, spilled)
            self._resume(inst, now)
            return
        self._meta[req] = (r, routed, pool, inst.index, misrouted, spilled, counted)
        self._resume(inst, now)

    def _catch_up(self, inst: _Instance, now: float) -> None:
        """Apply the steps of a planned decode run that started before `now`.

        NOTE: this must happen before a new request is added to the instance: with
        an admissible request waiting, `fast_forward` refuses to run, and the steps
        between the run's start and `now` would be lost (requests would generate
        nothing for that time).
        """
        if inst.mode != _RUN:
            return
        ff = inst.sched.fast_forward(inst.t0, until_time=now)
        if ff.steps:
            self.summary.fast_forwards += 1
            inst.busy_s += ff.now - inst.t0
            for done in ff.finished:
                self._finished(done)
        inst.version += 1  # the run's end event is void from here on
        if ff.now > now:
            # The run's last step straddles `now`: the next step starts at its end,
            # and requests arriving before then join that step.
            inst.mode = _STEP
            self._push(ff.now, inst)
        else:
            # Exactly at a step boundary: nothing in flight; `_resume` plans the next.
            inst.mode = _IDLE

    def _resume(self, inst: _Instance, now: float) -> None:
        """After requests were added at `now`: start the next step if none is in flight."""
        if inst.mode == _IDLE:
            self._plan(inst, now)
        else:
            self._sync(inst, now)

    def _submit(self, r: Request, pool: int, now: float) -> tuple[EngineRequest, _Instance]:
        p = self.pools[pool]
        inst = p.instances[p.balancer.pick()]
        self._catch_up(inst, now)
        sched = inst.sched
        prompt = r.prompt_tokens if r.prompt_tokens > 0 else 1
        if r.max_tokens is not None:
            max_tokens = max(1, r.max_tokens)
        else:
            # vLLM's default: generate up to the context limit.
            max_tokens = max(1, inst.max_len - prompt)
        out = min(max(1, r.output_tokens), max_tokens)
        self._next_id += 1
        req = sched.add_request(str(self._next_id), prompt, max_tokens, now, out)
        return req, inst

    # -- completions ----------------------------------------------------------------

    def _finished(self, req: EngineRequest) -> None:
        r, routed, pool, inst, misrouted, spilled, counted = self._meta.pop(req)
        prompt = req.prompt_tokens
        n_out = req.num_output_tokens
        # Router.observe with a usage dict, without the dict and two calls.
        self._calibrator.observe(routed.features, prompt, n_out)
        t = req.finish_time
        assert t is not None and req.first_token_time is not None
        if t > self._t_end:
            self._t_end = t
        if counted:
            st = self.pools[pool].stats
            ft = req.first_token_time
            arrival = req.arrival_time
            ttft = ft - arrival
            tpot = (t - ft) / (n_out - 1) if n_out > 1 else 0.0
            st.completed += 1
            st.preemptions += req.num_preemptions
            st.prompt_tokens += prompt
            st.generated_tokens += n_out
            st.ttft.add(ttft)
            st.tpot.add(tpot)
            st.e2e.add(t - arrival)
            ok1 = ttft <= self._slo_ttft
            ok2 = tpot <= self._slo_tpot
            st.ttft_ok += ok1
            st.tpot_ok += ok2
            st.slo_ok += ok1 and ok2
        if self.controller is not None:
            # SLO attainment per pool, decayed in time (memory _slo_tau seconds).
            # The same decay for the moments of its TPOT (the tail signal).
            ft = req.first_token_time
            tp = (t - ft) / (n_out - 1) if n_out > 1 else 0.0
            ok = ft - req.arrival_time <= self._slo_ttft and tp <= self._slo_tpot
            d = math.exp(-max(0.0, t - self._slo_t[pool]) / self._slo_tau)
            self._slo_t[pool] = t
            self._slo_n[pool] = self._slo_n[pool] * d + 1.0
            self._slo_good[pool] = self._slo_good[pool] * d + (1.0 if ok else 0.0)
            self._tpot_s1[pool] = self._tpot_s1[pool] * d + tp
            self._tpot_s2[pool] = self._tpot_s2[pool] * d + tp * tp
        if self.records is not None:
            self._record(r, pool, inst, req, False, misrouted, spilled)

    def _record(
        self,
        r: Request,
        pool: int,
        inst: int,
        req: EngineRequest | None,
        rejected: bool,
        misrouted: bool,
        spilled: bool,
    ) -> None:
        sink = self.records
        if sink is None:
            return
        name = self.pools[pool].name if pool >= 0 else ""
        if req is None or req.first_token_time is None or req.finish_time is None:
            sink.write(
                (
                    r.arrival_s,
                    name,
                    inst,
                    r.prompt_tokens,
                    r.output_tokens,
                    0,
                    None,
                    None,
                    None,
                    0,
                    rejected,
                    misrouted,
                    spilled,
                )
            )
            return
        n_out = req.num_output_tokens
        ft = req.first_token_time
        sink.write(
            (
                r.arrival_s,
                name,
                inst,
                req.prompt_tokens,
                r.output_tokens,
                n_out,
                ft - req.arrival_time,
                (req.finish_time - ft) / (n_out - 1) if n_out > 1 else 0.0,
                req.finish_time - req.arrival_time,
                req.num_preemptions,
                rejected,
                misrouted,
                spilled,
            )
        )


def simulate(
    fleet: FleetConfig,
    requests: Iterable[Request],
    options: SimOptions | None = None,
    *,
    records: RecordSink | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> Summary:
    """Simulate `requests` on `fleet`: a pure function of (fleet, requests, options).

    Returns a mergeable `Summary`; per-request rows go to `records` if given.
    """
    return Simulation(fleet, options, records=records, progress=progress).run(requests)
