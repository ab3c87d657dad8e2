"""The simulator against the engine stepped one step at a time (the reference).

A request that arrives while an instance is in the middle of a planned decode
run must not erase the steps that ran before it arrived: the simulator's
per-request timings must equal those of a driver that calls `Scheduler.step`
once per step and adds each request at the first step boundary after it arrives.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpool.engine import EngineConfig, Scheduler
from dualpool.simulator import simulate
from dualpool.simulator.fleet import FleetConfig, PoolConfig
from dualpool.simulator.records import RecordSink, Row
from dualpool.simulator.simulation import SimOptions
from dualpool.workload import Request

ENGINE = EngineConfig(
    tensor_parallel_size=1, max_model_len=4096, max_num_seqs=32, max_num_batched_tokens=2048
)


class ListSink(RecordSink):
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def write(self, row: Row) -> None:
        self.rows.append(row)

    def close(self) -> None:
        pass


def fleet() -> FleetConfig:
    from dualpool.engine import get_gpu, get_model

    return FleetConfig(
        get_model("llama-3.1-8b"), get_gpu("h100-80gb"), (PoolConfig("only", ENGINE, 1),)
    )


def reference(reqs: list[Request]) -> dict[float, tuple[float, float]]:
    """arrival -> (ttft, e2e), stepping the engine one step at a time."""
    f = fleet()
    sched = Scheduler.from_specs(f.model, f.gpu, ENGINE)
    out: dict[float, tuple[float, float]] = {}
    arrivals = {}
    now = 0.0
    i = 0
    while i < len(reqs) or sched.requests:
        while i < len(reqs) and reqs[i].arrival_s <= now:
            r = reqs[i]
            req = sched.add_request(
                str(i), r.prompt_tokens, r.max_tokens or 1, r.arrival_s, r.output_tokens
            )
            arrivals[req.request_id] = r.arrival_s
            i += 1
        if not sched.requests:
            now = reqs[i].arrival_s
            continue
        _, res = sched.step(now)
        now = res.now
        for done in res.finished:
            a = arrivals[done.request_id]
            assert done.first_token_time is not None and done.finish_time is not None
            out[a] = (done.first_token_time - a, done.finish_time - a)
    return out


def workload(seed: int, n: int) -> list[Request]:
    rng = random.Random(seed)
    t = 0.0
    reqs = []
    for _ in range(n):
        t += rng.expovariate(4.0)
        out = rng.randint(2, 300)
        reqs.append(Request(t, rng.randint(10, 1500), out, max_tokens=out, category="prose"))
    return reqs


def simulated(reqs: list[Request]) -> dict[float, tuple[float, float]]:
    sink = ListSink()
    simulate(fleet(), reqs, SimOptions(balancer="rr"), records=sink)
    return {row[0]: (row[6], row[8]) for row in sink.rows}


def test_an_arrival_mid_decode_run_keeps_the_steps_before_it() -> None:
    reqs = [
        Request(0.0, 100, 400, max_tokens=400, category="prose"),
        Request(1.0, 100, 5, max_tokens=5, category="prose"),
    ]
    ref, sim = reference(reqs), simulated(reqs)
    for a in ref:
        assert sim[a] == pytest.approx(ref[a], rel=1e-9, abs=1e-9)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_simulator_equals_step_by_step_engine(seed: int) -> None:
    reqs = workload(seed, 40)
    ref, sim = reference(reqs), simulated(reqs)
    assert ref.keys() == sim.keys()
    for a in ref:
        assert sim[a] == pytest.approx(ref[a], rel=1e-9, abs=1e-9), a
