"""The gateway's hook for the adaptive threshold: config, scraped signals, the Router's controller."""

from __future__ import annotations

from typing import Any

import pytest

from dualpool.errors import ConfigError
from dualpool.gateway import parse_config
from dualpool.gateway._backends import Backend, Pool
from dualpool.gateway._background import pool_signal
from dualpool.gateway._config import PoolConfig
from dualpool.policy import AdaptiveConfig, PoolSpec
from dualpool.router import Router

BASE: dict[str, Any] = {
    "pools": [
        {"name": "short", "endpoints": ["http://127.0.0.1:9001"], "max_model_len": 8192},
        {"name": "long", "endpoints": ["http://127.0.0.1:9002"], "max_model_len": 65536},
    ]
}


def test_routing_adaptive_config() -> None:
    assert parse_config(BASE).adaptive is None
    assert parse_config({**BASE, "routing": {"adaptive": True}}).adaptive == AdaptiveConfig()
    cfg = parse_config({**BASE, "routing": {"adaptive": {"interval_s": 5}}})
    assert cfg.adaptive is not None and cfg.adaptive.interval_s == 5
    with pytest.raises(ConfigError, match=r"routing\.adaptive\.nope"):
        parse_config({**BASE, "routing": {"adaptive": {"nope": 1}}})
    with pytest.raises(ConfigError, match=r"routing\.other"):
        parse_config({**BASE, "routing": {"other": 1}})


def pool(name: str, waiting: float, kv: float, n: int = 2) -> Pool:
    cfg = PoolConfig(name=name, endpoints=tuple(("h", 1000 + i) for i in range(n)))
    p = Pool(cfg, 0, 8192)
    for i in range(n):
        b = Backend(name, "h", 1000 + i, 4)
        b.waiting, b.kv_usage = waiting, kv
        p.add(b)
    p.refresh()
    return p


def test_scraped_load_moves_the_routers_threshold() -> None:
    router = Router([PoolSpec("short", 8192), PoolSpec("long", 65536)], adaptive=AdaptiveConfig())
    for b in range(100, 12000, 10):
        router.route_features(
            router.estimator.features({"messages": [{"role": "user", "content": "x" * b}]})
        )
    short, long = pool("short", 20.0, 0.97), pool("long", 0.0, 0.1)
    t = router.adapt(100.0, pool_signal(short, 100.0), pool_signal(long, 100.0))
    assert t < 8192 and router.policy.threshold(0) == t
    # No healthy backend in a pool: no signal, the threshold holds.
    empty = Pool(PoolConfig(name="long", endpoints=(("h", 1),)), 1, 65536)
    assert pool_signal(empty, 200.0) is None
    assert router.adapt(200.0, pool_signal(short, 200.0), None) == t
