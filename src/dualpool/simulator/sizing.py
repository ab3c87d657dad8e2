"""Instance counts for a target utilization, from the engine model's saturated throughput.

When the user gives no counts, each pool i gets

    n_i = max(1, ceil(lambda x share_i / (utilization x mu_i)))

- lambda: the workload's mean arrival rate (its nominal rate, else measured
  on the sample);
- share_i: the fraction of a sample of the workload (its first `sample`
  requests) that the router sends to pool i, with the same estimator and
  calibration feedback as the simulation, over-length retries included;
- mu_i: requests per second one instance of pool i completes when saturated:
  pool i's sample requests all queued at t = 0 on one engine instance, run to
  completion (requests / makespan). This is the engine model's own capacity on
  this traffic (prefill, decode, KV limits, preemptions), not the paper's
  published per-instance rates;
- utilization: target fraction of that capacity (default 0.8). Utilization
  near 1 makes queues (and TTFT) grow without bound; the simulator measures
  what a given target gives.

It is a starting point for a sweep, not an SLO guarantee.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass

from dualpool.budget import EstimatorConfig
from dualpool.engine import RequestStatus, Scheduler
from dualpool.errors import ConfigError, WorkloadError
from dualpool.policy import PoolPolicy
from dualpool.router import Router
from dualpool.simulator.fleet import FleetConfig, PoolConfig
from dualpool.simulator.simulation import SimOptions, _route_features
from dualpool.workload import Request, Workload, measure_rate, with_prompt_bytes

__all__ = ["PoolSizing", "saturated_throughput", "size_fleet"]


@dataclass(frozen=True, slots=True)
class PoolSizing:
    name: str
    # Fraction of the sample routed to this pool.
    share: float
    # Saturated requests/s of one instance on this pool's sample.
    mu: float
    instances: int


def saturated_throughput(
    fleet: FleetConfig, pool: PoolConfig, requests: Iterable[Request]
) -> float:
    """Requests/s one instance of `pool` completes with all `requests` queued at t=0."""
    sched = Scheduler.from_specs(fleet.model, fleet.gpu, pool.engine, fleet.step_params)
    n = 0
    mml = pool.engine.max_model_len
    for i, r in enumerate(requests):
        prompt = max(1, r.prompt_tokens)
        mt = r.max_tokens if r.max_tokens is not None else max(1, mml - prompt)
        out = min(max(1, r.output_tokens), max(1, mt))
        req = sched.add_request(str(i), prompt, max(1, mt), 0.0, out)
        n += req.status != RequestStatus.FINISHED_REJECTED
    if n == 0:
        return math.nan
    now = 0.0
    while sched.has_unfinished_requests:
        ff = sched.fast_forward(now)
        if ff.steps:
            now = ff.now
            continue
        _, res = sched.step(now)
        now = res.now
    return n / now if now > 0 else math.inf


def size_fleet(
    fleet: FleetConfig,
    workload: Iterable[Request],
    *,
    utilization: float = 0.8,
    rate: float | None = None,
    sample: int = 2000,
    options: SimOptions | None = None,
) -> tuple[FleetConfig, list[PoolSizing]]:
    """Fill in missing instance counts (pools that have one keep it)."""
    if not 0.0 < utilization <= 1.0:
        raise ConfigError("--utilization", f"must be in (0, 1], got {utilization!r}")
    opts = options or SimOptions()
    head = list(itertools.islice(iter(workload), sample))
    if len(head) < 2:
        raise WorkloadError(
            f"cannot size a fleet from {len(head)} request(s); need a longer workload"
        )
    if rate is None:
        hint = workload.rate_hint() if isinstance(workload, Workload) else None
        rate = hint if hint is not None else measure_rate(head)
    head = list(
        with_prompt_bytes(head, opts.bytes_per_token, jitter=opts.bytes_jitter, seed=opts.seed)
    )
    policy = PoolPolicy(fleet.pool_specs)
    router = Router(policy, opts.estimator or EstimatorConfig())
    per_pool: list[list[Request]] = [[] for _ in fleet.pools]
    model = fleet.model.name
    for r in head:
        routed = router.route_features(_route_features(r, r.prompt_bytes, model))
        p = routed.decision.pool
        if p < 0:
            continue
        mml = fleet.pools[p].engine.max_model_len
        need = r.prompt_tokens + (r.max_tokens if r.max_tokens is not None else 1)
        while need > mml and p + 1 < len(fleet.pools):
            p += 1
            mml = fleet.pools[p].engine.max_model_len
        per_pool[p].append(r)
        router.observe(
            routed, {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.output_tokens}
        )
    total = sum(len(x) for x in per_pool) or 1
    result: list[PoolSizing] = []
    counts: list[int] = []
    for pc, reqs in zip(fleet.pools, per_pool, strict=True):
        share = len(reqs) / total
        mu = saturated_throughput(fleet, pc, reqs[:600]) if reqs else math.nan
        if pc.instances is not None:
            n = pc.instances
        elif not reqs or not math.isfinite(mu) or mu <= 0:
            n = 1
        else:
            n = max(1, math.ceil(rate * share / (utilization * mu)))
        counts.append(n)
        result.append(PoolSizing(pc.name, share, mu, n))
    sized = fleet.with_instances(counts)
    return dataclasses.replace(sized), result
