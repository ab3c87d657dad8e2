"""The adaptive threshold in the simulator: the same controller object as the gateway's."""

from __future__ import annotations

import json

import pytest
from sim_helpers import small_fleet

from dualpool.policy import AdaptiveConfig
from dualpool.simulator import SimOptions, Simulation, simulate
from dualpool.simulator.fleet import FleetConfig
from dualpool.workload import preset


def test_adaptive_moves_the_threshold_toward_the_idle_pool_within_bounds() -> None:
    # Mostly 3-6K-token prompts on one short instance and three long ones: the short
    # pool queues while the long pool idles; the controller lowers B_short.
    fleet: FleetConfig = small_fleet(short=1, long=3)
    w = preset("lognormal", rate=12.0, duration_s=240.0, prompt_mu=8.2, prompt_sigma=0.4, seed=3)
    cfg = AdaptiveConfig(interval_s=5.0)
    sim = Simulation(fleet, SimOptions(adaptive=cfg))
    s = sim.run(w)
    assert sim.controller is not None and sim.controller.moves > 0
    ts = [t for _, t in sim.threshold_log]
    assert min(ts) < 8192
    assert all(sim.controller.lo <= t <= 8192 for t in ts)
    assert s.completed > 0
    static = simulate(
        fleet,
        preset("lognormal", rate=12.0, duration_s=240.0, prompt_mu=8.2, prompt_sigma=0.4, seed=3),
        SimOptions(),
    )
    # Relieving the queued pool lowers the worst pool's P99 TTFT.
    worst = max(p.ttft.quantile(0.99) for p in s.pools.values() if p.completed)
    worst_static = max(p.ttft.quantile(0.99) for p in static.pools.values() if p.completed)
    assert worst < worst_static


def test_static_option_leaves_no_controller() -> None:
    sim = Simulation(small_fleet(), SimOptions())
    assert sim.controller is None and sim.threshold_log == []


def test_cli_adaptive_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from dualpool.cli.main import main

    args = ["simulate", "--workload", "azure-conv-like", "--rate", "20", "--duration", "5",
            "--model", "llama-3.1-8b", "--short", "1", "--long", "1", "--adaptive", "--json"]  # fmt: skip
    assert main(args) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["totals"]["requests"] > 0


def test_the_controller_sees_each_pool_s_tail_tpot_and_recent_attainment() -> None:
    fleet: FleetConfig = small_fleet(short=1, long=1)
    w = preset("lognormal", rate=12.0, duration_s=60.0, prompt_mu=7.5, prompt_sigma=0.6, seed=4)
    sim = Simulation(fleet, SimOptions(adaptive=AdaptiveConfig(interval_s=5.0)))
    sim.run(w)
    tail = sim._tpot_tail(0)
    assert tail is not None and 0.0 < tail < 100.0
    # Time-decayed: the weight of the last few intervals, not of every completion.
    assert sim._slo_n[0] < sim.summary.pools[fleet.pools[0].name].completed
