"""The served models: each model's router and pools, and the lookup by the request's `model`.

    Models(served, strict)
      .lookup  {name or alias: Served}  one dict lookup on the request path
      .pools   every model's pools, flat (health probes, scrapes, /ready, metrics)
      .default the first model: requests without `model` (and every request when the
               config has `pools:`, one model: any name is served, as before)

A `Served` is one model: its `Router` (its own `PoolPolicy`; the `BudgetEstimator`
is shared by all, the calibrator keys its categories by model) and its `Pool`s in
the policy's order, so `decision.pool` indexes `Served.pools`. Reload (SIGHUP)
builds a new `Models` and swaps it whole (gateway/_ops.py); a request keeps the
`Served` it started with.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from dualpool.budget import BudgetEstimator
from dualpool.errors import ConfigError
from dualpool.gateway._backends import Pool
from dualpool.gateway._config import GatewayConfig, ModelConfig
from dualpool.policy import PoolPolicy, PoolSpec
from dualpool.router import Router

__all__ = ["Models", "Served", "build_models", "model_configs"]


class Served:
    """One model: its names, its router and its pools (in the policy's order)."""

    __slots__ = ("aliases", "key", "max_model_len", "name", "pools", "router")

    def __init__(
        self,
        name: str,
        aliases: Sequence[str],
        router: Router,
        pools: list[Pool],
        key: Hashable = None,
    ) -> None:
        self.name = name
        self.aliases = tuple(aliases)
        self.router = router
        self.pools = pools
        self.max_model_len = max(p.max_model_len for p in pools)
        # What the router was built from (the configured policy): a reload keeps the
        # router, and its adaptive threshold, while this is unchanged.
        self.key = key


class Models:
    """Every served model, and the lookup by name or alias."""

    __slots__ = ("default", "lookup", "pools", "served", "strict")

    def __init__(self, served: list[Served], *, strict: bool) -> None:
        self.served = served
        self.default = served[0]
        self.lookup = {n: s for s in served for n in (s.name, *s.aliases)}
        self.pools = [p for s in served for p in s.pools]
        # `models:` in the config: an unknown model is vLLM's 404; `pools:`: any name.
        self.strict = strict

    def of_pool(self, name: str) -> Served | None:
        for s in self.served:
            for p in s.pools:
                if p.name == name:
                    return s
        return None


def model_configs(cfg: GatewayConfig, name: str) -> tuple[ModelConfig, ...]:
    """The config's models; `pools:` is one model (`name`: configured or discovered)."""
    if cfg.models:
        return cfg.models
    return (ModelConfig(name, (), tuple(p.name for p in cfg.pools)),)


def build_models(
    cfg: GatewayConfig,
    name: str,
    pools: dict[str, Pool],
    estimator: BudgetEstimator,
    old: Models | None = None,
) -> Models:
    """One `Served` per model from running `Pool`s (each knows its max_model_len).

    A model whose pools (names, lengths, thresholds) and spillover are as in `old`
    keeps its router (and its adaptive threshold); any other gets a new router on
    the shared estimator. Raises `ConfigError` for a threshold over max_model_len.
    """
    kept = {s.name: s for s in old.served} if old is not None else {}
    served: list[Served] = []
    for mc in model_configs(cfg, name):
        specs = []
        for pname in mc.pools:
            pool = pools[pname]
            thr = pool.cfg.threshold
            if thr is not None and thr > pool.max_model_len:
                raise ConfigError(
                    f"pools.{pname}.threshold",
                    f"{thr} exceeds the discovered max_model_len {pool.max_model_len}",
                )
            specs.append(PoolSpec(pname, pool.max_model_len, thr))
        key = (tuple(specs), cfg.spillover)
        prev = kept.get(mc.name)
        if prev is not None and prev.key == key:
            router = prev.router
        else:
            router = Router(PoolPolicy(specs, spillover=cfg.spillover), estimator, cfg.adaptive)
        ordered = [pools[s.name] for s in router.policy.pools]
        for i, p in enumerate(ordered):
            p.index = i
        served.append(Served(mc.name, mc.aliases, router, ordered, key))
    return Models(served, strict=bool(cfg.models))
