"""The A/B: the same GPUs as one homogeneous long-context pool and as a short + long split.

    workload ─► planner (verified: whole pools simulated on disjoint windows)
                ─► instances per arm, one GPU budget; both arms simulated on the
                   requests replayed: the prediction (`compare_plan`)
    arm "homogeneous": `dualpool emulate` x N (long config) ◄─ gateway ◄─┐
    arm "split":       short x S + long x L (same GPUs)     ◄─ gateway ◄─┤ dualpool bench:
                                                                         │ every request to
                                                                         └ both at once

The budget is the smaller of the two fleets the planner sizes for the SLOs
(homogeneous, or split): the arm the planner says needs more gets less than
it needs. The simulator, on the very requests the arms replay, predicts
what each arm does at that budget, with the interval of a replay of that
size; the measurement says what it did. Time is compressed: the emulators run
`speedup` times faster than the modelled GPUs and the bench sends at trace
time / speedup, so latencies are reported in modelled seconds (wall x speedup).

Everything started here (emulator and gateway processes) is stopped here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dualpool.bench import (
    ArmProgress,
    BodyMaker,
    BodyOptions,
    Endpoint,
    PromptSynth,
    RequestResult,
    RunOptions,
    Summary,
    load_workload,
    run_bench,
    summarize,
)
from dualpool.compare_plan import ARMS, ArmFigures, ArmPlan, PoolPlan, figures, plan_arms
from dualpool.emulator.testing import EmulatorProcess
from dualpool.errors import ConfigError
from dualpool.tokenizers import load_tokenizer
from dualpool.workload import Request

__all__ = [
    "ArmPlan",
    "CompareResult",
    "CompareSettings",
    "goodput_fraction",
    "measured_advantage",
    "measured_diff_ci",
    "measured_figures",
    "plan_arms",
    "predicted_advantage",
    "run_compare",
]


@dataclass(frozen=True)
class CompareSettings:
    """What `dualpool demo --compare` runs (flags of the same names)."""

    # The default: the paper's regime, many short chat requests (LMSYS-Chat-1M's
    # lengths) on long-context instances capped at 16 sequences (docs/bench.md).
    workload: str = "lmsys-like"
    # the fleet's arrival rate in modelled time, req/s
    rate: float = 7.0
    requests: int = 480
    model: str = "llama-3-70b"
    gpu: str = "a100-80gb"
    # modelled seconds per wall second (emulators and sending alike)
    speedup: float = 2.0
    b_short: int = 8192
    ttft_slo_s: float = 2.0
    tpot_slo_s: float = 0.080
    seed: int = 0
    # hard wall-clock limit of the replay (the prediction stops there too)
    max_time_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ConfigError("--rate", f"must be > 0, got {self.rate}")
        if self.requests < 10:
            raise ConfigError("--requests", f"must be >= 10, got {self.requests}")
        if not self.speedup > 0:
            raise ConfigError("--speedup", f"must be > 0, got {self.speedup}")


def _load(settings: CompareSettings) -> list[Request]:
    w = load_workload(settings.workload, settings.requests, settings.rate)
    reqs = [r for r in w if r.tokens_known]
    if len(reqs) < 10:
        raise ConfigError("workload", f"{settings.workload!r} gave {len(reqs)} usable requests")
    return reqs


# -- processes ------------------------------------------------------------------------------

# A gateway in its own process (its own core and GIL): prints its port, serves until
# its stdin closes.
_GATEWAY = """
import json, sys
from dualpool.gateway.testing import GatewayThread
gw = GatewayThread(json.loads(sys.argv[1]))
print(json.dumps({"port": gw.port}), flush=True)
sys.stdin.read()
gw.stop()
"""


class _GatewayProcess:
    def __init__(self, config: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _GATEWAY, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError("the gateway process did not start")
        self.port = int(json.loads(line)["port"])
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(10)
            except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _emulator_args(s: CompareSettings, p: PoolPlan) -> list[str]:
    length, seqs, batch = p.engine
    return [
        "--model", s.model, "--gpu", s.gpu, "--tp", str(p.tp),
        "--max-model-len", str(length), "--max-num-seqs", str(seqs),
        "--max-num-batched-tokens", str(batch), "--instances", str(p.instances),
        "--speedup", str(s.speedup), "--seed", str(s.seed), "--served-model-name", s.model,
    ]  # fmt: skip


# -- results -----------------------------------------------------------------------------


@dataclass(slots=True)
class ArmResult:
    summary: Summary
    results: list[RequestResult]
    preemptions: float
    rejections: float
    misroutes: float
    per_pool: dict[str, int]
    # learned bytes per token by content class
    ratios: dict[str, float]
    emulator_lag_s: float
    # bootstrap 90% interval of the goodput fraction (good / sent)
    goodput_ci: tuple[float, float] = (0.0, 0.0)
    # the emulators' own means from vLLM's histograms (engine clock, modelled seconds):
    # what the engines did, free of delivery and client delays
    engine_ttft_mean_s: float = math.nan
    engine_tpot_mean_s: float = math.nan
    # bootstrap 90% intervals of the measured P99 TTFT and TPOT (modelled seconds)
    ttft_p99_ci: tuple[float, float] = (math.nan, math.nan)
    tpot_p99_ci: tuple[float, float] = (math.nan, math.nan)
    # short requests the gateway spilled to a larger pool (saturated short pool)
    spillovers: float = 0.0


@dataclass(slots=True)
class CompareResult:
    settings: CompareSettings
    plan: ArmPlan
    arms: dict[str, ArmResult] = field(default_factory=dict)
    wall_s: float = 0.0
    stopped: str = ""


def _scrape(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        name, _, rest = key.partition("{")
        labels = dict(
            (kv.split("=", 1)[0], kv.split("=", 1)[1].strip('"'))
            for kv in rest.rstrip("}").split(",")
            if "=" in kv
        )
        try:
            out.append((name, labels, float(value)))
        except ValueError:
            continue
    return out


async def _metric_sum(urls: list[str], name: str, **labels: str) -> float:
    from dualpool.bench._client import get

    total = 0.0
    for url in urls:
        try:
            status, body = await get(Endpoint.parse(url), "/metrics")
        except OSError:
            continue
        if status != 200:
            continue
        for n, lab, v in _scrape(body.decode("utf-8", "replace")):
            if n == name and all(lab.get(k) == v2 for k, v2 in labels.items()):
                total += v
    return total


async def _ratios(url: str) -> dict[str, float]:
    from dualpool.bench._client import get

    try:
        status, body = await get(Endpoint.parse(url), "/admin")
    except OSError:
        return {}
    if status != 200:
        return {}
    cats = json.loads(body).get("calibrator", {}).get("categories", [])
    return {c["class"]: round(float(c["bytes_per_token"]), 3) for c in cats if c.get("learned")}


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def _good(r: RequestResult, s: CompareSettings) -> bool:
    """Goodput in modelled time: wall latencies x speedup against the SLOs."""
    return (
        r.success and r.ttft_s * s.speedup <= s.ttft_slo_s and r.tpot_s * s.speedup <= s.tpot_slo_s
    )


def _p99_ci(values: list[float], seed: int) -> tuple[float, float]:
    """90% bootstrap interval of the 99th percentile."""
    if len(values) < 2:
        return math.nan, math.nan
    a = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    qs = np.percentile(a[rng.integers(0, a.size, (500, a.size))], 99, axis=1)
    return float(np.percentile(qs, 5)), float(np.percentile(qs, 95))


def _bootstrap(flags: list[bool], seed: int) -> tuple[float, float]:
    if not flags:
        return 0.0, 0.0
    a = np.asarray(flags, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, a.size, (1000, a.size))].mean(axis=1)
    return float(np.percentile(means, 5)), float(np.percentile(means, 95))


def run_compare(
    settings: CompareSettings,
    *,
    progress: Callable[[str, list[ArmProgress] | None, float], None] | None = None,
) -> CompareResult:
    """Plan, start both arms, replay the workload through both at once, stop everything."""
    t_start = time.perf_counter()

    def say(what: str) -> None:
        if progress is not None:
            progress(what, None, time.perf_counter() - t_start)

    say("reading the workload")
    requests = _load(settings)
    plan = plan_arms(settings, requests, say=say)
    result = CompareResult(settings, plan)
    emulators: list[tuple[str, str, EmulatorProcess]] = []
    gateways: dict[str, _GatewayProcess] = {}
    try:
        say("starting emulated vLLM instances")
        for arm, pools in plan.arms.items():
            for p in pools:
                emulators.append((arm, p.name, EmulatorProcess(_emulator_args(settings, p))))
        with ThreadPoolExecutor(len(emulators)) as pool:  # they load in parallel
            try:
                list(pool.map(lambda e: e.start(), [e for _, _, e in emulators]))
            except RuntimeError as exc:  # `dualpool emulate` refused the config
                raise ConfigError("--model/--gpu", str(exc).splitlines()[-1]) from None
        say("starting the gateways")
        for arm, pools in plan.arms.items():
            mine = [(name, e) for a, name, e in emulators if a == arm]
            cfg_pools = []
            for p, (_, e) in zip(pools, mine, strict=True):
                # The gateway must not be the bottleneck of either arm: room for every
                # sequence the pool's engines hold, and a deep queue.
                entry: dict[str, Any] = {
                    "name": p.name,
                    "endpoints": e.urls,
                    "max_concurrency": 2 * p.instances * p.engine[1],
                    "max_queue": 4096,
                }
                if p.engine[0] == settings.b_short and len(pools) > 1:
                    entry["threshold"] = settings.b_short
                cfg_pools.append(entry)
            gateways[arm] = _GatewayProcess(
                {
                    "model": settings.model,
                    "pools": cfg_pools,
                    "health": {"interval": 1.0, "metrics_interval": 0.5, "timeout": 2.0},
                    # a request waits for a slot as long as the run lasts: no 429 (the
                    # engines queue what they cannot run, as the simulator's do)
                    "backpressure": {"max_wait": settings.max_time_s + 10.0},
                    "log": {"level": "warning", "access": "debug"},
                }
            )
        say("replaying the workload through both arms")
        maker = BodyMaker(
            PromptSynth(load_tokenizer("llama3"), seed=settings.seed),
            BodyOptions(model=settings.model),
        )
        options = RunOptions(speedup=settings.speedup, max_time_s=settings.max_time_s)

        async def replay() -> Any:
            out = await run_bench(
                [(arm, Endpoint.parse(gateways[arm].url)) for arm in ARMS],
                requests,
                maker,
                options,
                progress=(
                    None if progress is None else lambda arms, el: progress("replaying", arms, el)
                ),
            )
            extras = {}
            for arm in ARMS:
                urls = [u for a, _, e in emulators if a == arm for u in e.urls]
                gw = [gateways[arm].url]
                extras[arm] = (
                    await _metric_sum(urls, "vllm:num_preemptions_total"),
                    await _metric_sum(
                        gw, "dualpool_routing_decisions_total", reason="rejected_too_long"
                    ),
                    await _metric_sum(gw, "dualpool_misroutes_total"),
                    await _metric_sum(gw, "dualpool_spillovers_total"),
                    await _ratios(gateways[arm].url),
                    await _metric_sum(urls, "dualpool_emulator_lag_seconds_total"),
                    _ratio(
                        await _metric_sum(urls, "vllm:time_to_first_token_seconds_sum"),
                        await _metric_sum(urls, "vllm:time_to_first_token_seconds_count"),
                    ),
                    _ratio(
                        await _metric_sum(urls, "vllm:request_time_per_output_token_seconds_sum"),
                        await _metric_sum(urls, "vllm:request_time_per_output_token_seconds_count"),
                    ),
                )
            return out, extras

        try:
            import uvloop

            run, extras = uvloop.run(replay())
        except ImportError:  # pragma: no cover
            run, extras = asyncio.run(replay())
        result.stopped = run.stopped
        for arm in ARMS:
            rs = run.results[arm]
            # Summaries in modelled time: the run was compressed by `speedup`.
            scaled = [_scaled(r, settings.speedup) for r in rs]
            summary = summarize(
                scaled,
                run.durations[arm] * settings.speedup,
                goodput={"ttft": settings.ttft_slo_s * 1000, "tpot": settings.tpot_slo_s * 1000},
            )
            per_pool: dict[str, int] = {}
            for r in rs:
                per_pool[r.pool or "-"] = per_pool.get(r.pool or "-", 0) + 1
            pre, rej, mis, spill, ratios, lag, eng_ttft, eng_tpot = extras[arm]
            result.arms[arm] = ArmResult(
                summary,
                scaled,
                pre,
                rej,
                mis,
                per_pool,
                ratios,
                lag,
                _bootstrap([_good(r, settings) for r in rs], settings.seed),
                eng_ttft,
                eng_tpot,
                _p99_ci([r.ttft_s for r in scaled if r.success], settings.seed),
                _p99_ci(
                    [r.tpot_s for r in scaled if r.success and r.output_tokens > 1], settings.seed
                ),
                spill,
            )
    finally:
        for gw in gateways.values():
            gw.stop()
        for _, _, e in emulators:
            e.stop(10)
    result.wall_s = time.perf_counter() - t_start
    return result


def predicted_advantage(plan: ArmPlan) -> bool:
    """The simulator, on the replayed requests, has the split ahead at this budget:
    more requests within both SLOs and a lower P99 TTFT (as `measured_advantage`)."""
    assert plan.prediction is not None
    return plan.prediction.split_ahead()


def measured_figures(res: CompareResult, arm: str) -> ArmFigures:
    """The arm's measured figures, defined as the prediction's (modelled time)."""
    s, a = res.settings, res.arms[arm]
    ttft: list[float | None] = []
    tpot: list[float | None] = []
    for r in a.results:
        ok = r.success
        ttft.append(r.ttft_s if ok else None)
        tpot.append(r.tpot_s if ok else None)
    return figures(ttft, tpot, s.ttft_slo_s, s.tpot_slo_s, int(a.preemptions), int(a.rejections))


def measured_diff_ci(res: CompareResult, metric: str, seed: int = 0) -> tuple[float, float]:
    """90% paired bootstrap interval of split - homogeneous (the same requests in both)."""
    s = res.settings
    h = sorted(res.arms["homogeneous"].results, key=lambda r: r.index)
    sp = sorted(res.arms["split"].results, key=lambda r: r.index)
    if len(h) != len(sp) or len(h) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(h), (400, len(h)))
    per: list[np.ndarray] = []
    for rs in (h, sp):
        ttft = np.asarray([r.ttft_s if r.success else np.nan for r in rs])[idx]
        tpot = np.asarray([r.tpot_s if r.success else np.nan for r in rs])[idx]
        with np.errstate(invalid="ignore"):
            if metric == "goodput":
                ok = (ttft <= s.ttft_slo_s) & (tpot <= s.tpot_slo_s)
                per.append(ok.mean(axis=1))
            else:
                v = ttft if metric == "ttft_p99_s" else tpot
                per.append(np.nanpercentile(v, 99, axis=1))
    a = per[1] - per[0]
    a = a[np.isfinite(a)]
    if a.size < 2:
        return math.nan, math.nan
    return float(np.percentile(a, 5)), float(np.percentile(a, 95))


def goodput_fraction(res: CompareResult, arm: str) -> float:
    """The share of the arm's requests that met both SLOs (modelled time)."""
    s, rs = res.settings, res.arms[arm].results
    good = sum(r.success and r.ttft_s <= s.ttft_slo_s and r.tpot_s <= s.tpot_slo_s for r in rs)
    return good / len(rs) if rs else 0.0


def measured_advantage(res: CompareResult) -> bool:
    """The split was ahead in the run: more of its requests met the SLOs, and a lower P99 TTFT."""
    h, sp = res.arms["homogeneous"], res.arms["split"]
    return goodput_fraction(res, "split") > goodput_fraction(res, "homogeneous") and (
        sp.summary.metric("ttft", "p99") < h.summary.metric("ttft", "p99")
    )


def _scaled(r: RequestResult, k: float) -> RequestResult:
    """The result in modelled time (wall seconds x speedup)."""
    return dataclasses.replace(
        r,
        scheduled_s=r.scheduled_s * k,
        start_s=r.start_s * k,
        queue_s=r.queue_s * k,
        ttft_s=r.ttft_s * k,
        e2e_s=r.e2e_s * k,
        itl_s=[x * k for x in r.itl_s],
    )
