"""The paper's cost model and the queueing formulas the planner adds to it.

Pure math on floats: no engine, no workload. Symbols::

    lambda   arrival rate of the whole fleet (req/s)
    alpha    share of requests whose total budget is <= B_short
    mu_s     requests/s one short-pool instance sustains (saturated)
    mu_l     requests/s one long-pool instance sustains (saturated)
    rho      mu_s / mu_l: the per-instance gain of the short config
    u        utilization cap: no instance is planned above u x mu

Closed form (continuous, no ceilings): the split needs
alpha/mu_s + (1 - alpha)/mu_l instance-units per unit of traffic instead of
1/mu_l, a saving of ``alpha x (1 - 1/rho)``. It holds only when both pools use
the same number of GPUs per instance; `closed_form_saving_gpus` keeps the TP
of each pool.

Discrete form (whole instances, utilization cap)::

    G_homo = ceil(lambda / (u mu_l))
    G_dual = ceil(alpha lambda / (u mu_s)) + ceil((1 - alpha) lambda / (u mu_l))

Queueing (Erlang C): an instance is modelled as c parallel slots (its
sequences), each serving one request for S seconds on average; arrivals are
Poisson. M/M/c gives the probability a request waits, C(c, a) with
a = lambda S, and the waiting-time tail P(W > t) = C exp(-(c/S - lambda) t).
For general service times the Allen-Cunneen approximation scales the wait by
(1 + cv_s^2) / 2 (cv_s: coefficient of variation of the service time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "DiscreteSizing",
    "closed_form_saving",
    "closed_form_saving_gpus",
    "discrete_sizing",
    "erlang_b",
    "erlang_c",
    "mgc_wait_quantile",
    "pool_instances",
    "recommend_split",
]


def closed_form_saving(alpha: float, rho: float) -> float:
    """The paper's fleet saving alpha x (1 - 1/rho)."""
    _check_share("alpha", alpha)
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho!r}")
    return alpha * (1.0 - 1.0 / rho)


def closed_form_saving_gpus(
    alpha: float,
    mu_short: float,
    mu_long: float,
    tp_short: int,
    tp_long: int,
    mu_homogeneous: float | None = None,
) -> float:
    """The continuous saving in GPUs, per pool TP and per pool mix.

    GPUs per unit of traffic: homogeneous tp_l/mu_h (mu_h: the long config on
    the whole mix, default mu_long); split alpha tp_s/mu_s + (1 - alpha)
    tp_l/mu_l. Equals `closed_form_saving` when tp_s == tp_l and
    mu_h == mu_l.
    """
    _check_share("alpha", alpha)
    homo = tp_long / (mu_long if mu_homogeneous is None else mu_homogeneous)
    split = alpha * tp_short / mu_short + (1.0 - alpha) * tp_long / mu_long
    return 1.0 - split / homo


def pool_instances(rate: float, mu: float, utilization: float = 1.0) -> int:
    """ceil(rate / (u mu)), 0 for no traffic; a tiny epsilon absorbs float noise."""
    if rate < 0 or not math.isfinite(rate):
        raise ValueError(f"rate must be a finite number >= 0, got {rate!r}")
    if not mu > 0:
        raise ValueError(f"mu must be > 0, got {mu!r}")
    if not 0.0 < utilization <= 1.0:
        raise ValueError(f"utilization must be in (0, 1], got {utilization!r}")
    if rate == 0:
        return 0
    return max(1, math.ceil(rate / (utilization * mu) - 1e-9))


@dataclass(frozen=True, slots=True)
class DiscreteSizing:
    """Whole-instance counts of the discrete form."""

    homogeneous: int
    short: int
    long: int

    @property
    def split(self) -> int:
        return self.short + self.long

    def gpus(self, tp_homogeneous: int, tp_short: int, tp_long: int) -> tuple[int, int]:
        """(homogeneous GPUs, split GPUs)."""
        return (
            self.homogeneous * tp_homogeneous,
            self.short * tp_short + self.long * tp_long,
        )


def discrete_sizing(
    rate: float,
    alpha: float,
    mu_short: float,
    mu_long: float,
    utilization: float = 1.0,
    mu_homogeneous: float | None = None,
) -> DiscreteSizing:
    """G_homo, G_short, G_long with ceilings and a utilization cap.

    `mu_homogeneous` is the long config's rate on the whole mix (default
    mu_long); mu_long is its rate on the long share only.
    """
    _check_share("alpha", alpha)
    mu_h = mu_long if mu_homogeneous is None else mu_homogeneous
    return DiscreteSizing(
        homogeneous=pool_instances(rate, mu_h, utilization),
        short=pool_instances(alpha * rate, mu_short, utilization),
        long=pool_instances((1.0 - alpha) * rate, mu_long, utilization),
    )


def recommend_split(homogeneous_cost: float, split_cost: float, min_saving: float = 0.0) -> bool:
    """Split only when it saves more than `min_saving` (a fraction) of the cost.

    Equal cost means no split: two pools are more to run for nothing.
    """
    if homogeneous_cost <= 0:
        return False
    return (homogeneous_cost - split_cost) / homogeneous_cost > min_saving


def erlang_b(servers: int, offered: float) -> float:
    """Blocking probability of M/M/c/c (Erlang B), by the stable recursion."""
    if servers < 0:
        raise ValueError(f"servers must be >= 0, got {servers}")
    if offered < 0:
        raise ValueError(f"offered load must be >= 0, got {offered}")
    b = 1.0
    for k in range(1, servers + 1):
        b = offered * b / (k + offered * b)
    return b


def erlang_c(servers: int, offered: float) -> float:
    """Probability an arrival waits in M/M/c (Erlang C); 1.0 when unstable.

    offered = lambda x S (erlangs); stable when offered < servers.
    """
    if servers < 1:
        raise ValueError(f"servers must be >= 1, got {servers}")
    if offered >= servers:
        return 1.0
    b = erlang_b(servers, offered)
    rho = offered / servers
    return b / (1.0 - rho * (1.0 - b))


def mgc_wait_quantile(
    servers: int, arrival_rate: float, mean_service_s: float, q: float, service_cv: float = 1.0
) -> float:
    """The q-quantile of the queueing wait in M/G/c (Allen-Cunneen on M/M/c).

    M/M/c: P(W > t) = C exp(-(c/S - lambda) t), so the q-quantile is
    ln(C / (1 - q)) / (c/S - lambda) when C > 1 - q, else 0. The general
    service time scales it by (1 + cv^2) / 2. Infinite when unstable.
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q!r}")
    if arrival_rate <= 0:
        return 0.0
    offered = arrival_rate * mean_service_s
    if offered >= servers:
        return math.inf
    c = erlang_c(servers, offered)
    tail = 1.0 - q
    if c <= tail:
        return 0.0
    drain = servers / mean_service_s - arrival_rate
    return math.log(c / tail) / drain * (1.0 + service_cv**2) / 2.0


def _check_share(name: str, v: float) -> None:
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {v!r}")
