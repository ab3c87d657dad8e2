"""Operating the gateway: readiness, live reload of the fleet YAML (SIGHUP), TLS.

readiness(gw)      /ready: ready while any pool can serve (spillover covers the
                   others); `degraded` names the pools without a healthy backend
attach_metrics(gw) dualpool_ready, dualpool_degraded, dualpool_pool_available,
                   dualpool_learned_bytes_per_token_sigma
reload(gw, path)   SIGHUP: re-read the YAML; a bad file keeps the old config (one log
                   line); models and pools (added, removed, changed), auth,
                   backpressure, retries, timeouts, health, limits (new
                   connections) and log levels apply, swapped in one step; open
                   connections and requests in flight are untouched; settings
                   that need a restart (listen, TLS, estimator, calibrator,
                   routing.adaptive) are named in the log
tls_context(cfg)   an SSLContext for the listening socket (listen.tls: {cert, key})
"""

from __future__ import annotations

import dataclasses
import logging
import math
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dualpool.errors import ConfigError, DualpoolError
from dualpool.gateway._backends import Backend, Pool
from dualpool.gateway._background import resolve_loop
from dualpool.gateway._config import GatewayConfig, PoolConfig, TlsConfig, load_config
from dualpool.gateway._metrics import Gauge
from dualpool.gateway._models import build_models

if TYPE_CHECKING:
    from dualpool.gateway._gateway import Gateway

__all__ = ["attach_metrics", "readiness", "reload", "tls_context"]

log = logging.getLogger("dualpool.gateway")


# ---- readiness ------------------------------------------------------------------------
def readiness(gw: Gateway) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of /ready: 200 while any pool has a healthy backend."""
    healthy = {p.name: len(p.healthy) for p in gw.pools}
    down = [name for name, n in healthy.items() if n == 0]
    ok = len(down) < len(healthy) and not gw.draining
    body: dict[str, Any] = {
        "ready": ok,
        "degraded": bool(down),
        "unavailable_pools": down,
        "healthy_backends": healthy,
    }
    if gw.draining:
        body["draining"] = True
    return (200 if ok else 503), body


def attach_metrics(gw: Gateway) -> None:
    registry = gw.metrics.registry
    ready = registry.add(Gauge("dualpool_ready", "1 while /ready answers 200."))
    degraded = registry.add(
        Gauge("dualpool_degraded", "1 while some pool has no healthy backend (others serve).")
    )
    available = registry.add(
        Gauge("dualpool_pool_available", "1 when the pool has a healthy backend.", ("pool",))
    )
    sigma = registry.add(
        Gauge(
            "dualpool_learned_bytes_per_token_sigma",
            "Spread (weighted std. dev.) of the per-request bytes per token, by category.",
            ("category",),
        )
    )

    def collect() -> None:
        status, body = readiness(gw)
        ready.set(1.0 if status == 200 else 0.0)
        degraded.set(1.0 if body["degraded"] else 0.0)
        available.clear()
        for name, n in body["healthy_backends"].items():
            available.labels(name).set(1.0 if n else 0.0)
        sigma.clear()
        for cat in gw.router.estimator.calibrator.categories():
            s = cat.get("sigma")
            if isinstance(s, float) and not math.isnan(s):
                sigma.labels(cat["category"]).set(s)

    gw.metrics.add_collector(collect)


# ---- TLS ----------------------------------------------------------------------------
def tls_context(tls: TlsConfig | None) -> ssl.SSLContext | None:
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


# ---- reload (SIGHUP) --------------------------------------------------------------------
# Settings that need a restart: the listening socket, and what the shared estimator and
# calibrator were built from. The rest applies: models, pools, auth, backpressure,
# retries, timeouts, health, limits (for new connections), log levels, spillover.
_RESTART = ("host", "port", "tls", "estimator", "calibrator", "adaptive")
# Pool settings applied in place to the running pool.
_LIVE_POOL_FIELDS = ("endpoints", "max_concurrency", "max_queue", "max_waiting", "max_kv_usage")
# Pool settings applied by the model's new routing policy (the pool itself stays).
_POLICY_POOL_FIELDS = ("max_model_len", "threshold")


def _same_pool(old: PoolConfig, new: PoolConfig) -> bool:
    """True when the running pool can take `new` in place; else a new pool replaces it."""
    skip = _LIVE_POOL_FIELDS + _POLICY_POOL_FIELDS
    return all(
        getattr(old, f.name) == getattr(new, f.name)
        for f in dataclasses.fields(PoolConfig)
        if f.name not in skip
    )


def _apply_pool(gw: Gateway, pool: Pool, new: PoolConfig, max_model_len: int) -> list[str]:
    changes: list[str] = []
    old: PoolConfig = pool.cfg
    if new.dns is None and new.endpoints != old.endpoints:
        wanted = set(new.endpoints)
        for b in list(pool.backends):
            if (b.host, b.port) not in wanted:
                pool.remove(b)  # its requests in flight finish on their connections
        have = {(b.host, b.port) for b in pool.backends}
        for host, port in new.endpoints:
            if (host, port) not in have:
                pool.add(Backend(pool.name, host, port, gw.config.limits.max_idle_per_backend))
        changes.append(f"pools.{pool.name}.endpoints")
    if new.max_concurrency != old.max_concurrency:
        pool.max_concurrency = new.max_concurrency
        changes.append(f"pools.{pool.name}.max_concurrency")
    if new.max_queue != old.max_queue:
        pool.max_queue = new.max_queue
        changes.append(f"pools.{pool.name}.max_queue")
    for key in ("max_waiting", "max_kv_usage", "threshold"):
        if getattr(new, key) != getattr(old, key):
            changes.append(f"pools.{pool.name}.{key}")
    if max_model_len != pool.max_model_len:
        pool.max_model_len = max_model_len
        changes.append(f"pools.{pool.name}.max_model_len")
    if new.dns is not None:
        new = dataclasses.replace(new, endpoints=old.endpoints)
    pool.cfg = new  # read by the scrape loop (max_waiting, max_kv_usage)
    pool.refresh()
    return changes


async def _new_pool(gw: Gateway, cfg: PoolConfig, timeouts: float) -> Pool:
    """A pool the running config does not have: its backends and its max_model_len."""
    from dualpool.gateway._server import _backends_of, _discover

    backends = await _backends_of(cfg, gw.config.limits.max_idle_per_backend)
    mml = cfg.max_model_len
    if mml is None:
        deadline = gw.loop.time() + timeouts
        found, _ = await _discover(cfg, backends, gw.config.health.timeout, deadline)
        assert found is not None  # _discover raises ConfigError when it finds nothing
        mml = found
    pool = Pool(cfg, 0, mml)
    for b in backends:
        pool.add(b)
    return pool


async def reload(gw: Gateway, path: str | Path, *, host: str | None, port: int | None) -> list[str]:
    """Apply the YAML at `path` to a running gateway; returns what changed.

    A file that does not read or validate changes nothing (one warning line).
    `host`/`port` are the command line's overrides, kept over the file's. The new
    models and pools are built aside, then swapped in one step: a request routes by
    the old config or the new, never a mix, and one in flight keeps its pools.
    """
    async with gw.reloading:  # one reload at a time (two quick SIGHUPs)
        try:
            return await _reload(gw, path, host=host, port=port)
        except DualpoolError as exc:
            log.warning("reload: %s; keeping the running config", exc)
            return []


async def _reload(
    gw: Gateway, path: str | Path, *, host: str | None, port: int | None
) -> list[str]:
    new = load_config(path)
    old = gw.config
    new = dataclasses.replace(
        new,
        host=old.host if host is not None else new.host,
        port=old.port if port is not None else new.port,
    )
    restart = [f for f in _RESTART if getattr(old, f) != getattr(new, f)]
    new = dataclasses.replace(new, **{f: getattr(old, f) for f in _RESTART})
    # Aside: every pool of the new config, running or new; nothing live changes yet.
    running = {p.name: p for p in gw.pools}
    fresh: dict[str, Pool] = {}
    lens: dict[str, int] = {}
    try:
        for pcfg in new.pools:
            cur = running.get(pcfg.name)
            if cur is not None and _same_pool(cur.cfg, pcfg):
                lens[pcfg.name] = pcfg.max_model_len or cur.max_model_len
                thr = pcfg.threshold
                if thr is not None and thr > lens[pcfg.name]:
                    raise ConfigError(
                        f"pools.{pcfg.name}.threshold",
                        f"{thr} exceeds max_model_len {lens[pcfg.name]}",
                    )
            else:
                fresh[pcfg.name] = await _new_pool(gw, pcfg, new.timeouts.discovery)
    except DualpoolError:
        _close(fresh.values())
        raise
    # The swap: all synchronous from here, so no request sees half of it.
    changes: list[str] = []
    pools: dict[str, Pool] = {}
    for pcfg in new.pools:
        pool = fresh.get(pcfg.name)
        if pool is None:
            pool = running[pcfg.name]
            changes += _apply_pool(gw, pool, pcfg, lens[pcfg.name])
        else:
            verb = "replaced" if pcfg.name in running else "added"
            changes.append(f"pools.{pcfg.name} ({verb})")
        pools[pcfg.name] = pool
    gone = [p for name, p in running.items() if pools.get(name) is not p]
    changes += [f"pools.{p.name} (removed)" for p in gone if p.name not in pools]
    try:
        models = build_models(new, new.model or gw.model, pools, gw.router.estimator, gw.models)
    except DualpoolError:  # pragma: no cover - thresholds were checked above
        _close(fresh.values())
        raise
    before = {s.name: (s.aliases, [p.name for p in s.pools]) for s in gw.models.served}
    after = {s.name: (s.aliases, [p.name for p in s.pools]) for s in models.served}
    if before != after:
        changes.append("models")
    changes += [f for f in _GLOBAL if getattr(old, f) != getattr(new, f)]
    gw.set_models(models)
    gw.apply_settings(new)
    _apply_server(gw, new)
    for pool in fresh.values():
        if pool.cfg.dns is not None:
            gw.spawn(resolve_loop(gw, pool))
    # Pools no longer served: no new request reaches them; those in flight finish
    # on their connections, which then close.
    _close(gone)
    log.warning(
        "reload of %s: applied %s%s",
        path,
        ", ".join(changes) or "nothing (no live setting changed)",
        f"; needs a restart, not applied: {', '.join(restart)}" if restart else "",
    )
    return changes


# Global settings that apply on reload (logged by name when they change).
_GLOBAL = (
    "model",
    "spillover",
    "backpressure",
    "retries",
    "timeouts",
    "health",
    "limits",
    "auth",
    "log",
)


def _apply_server(gw: Gateway, cfg: GatewayConfig) -> None:
    logging.getLogger("dualpool").setLevel(cfg.log.level.upper())
    server = gw.server
    if server is None:
        return
    lim = cfg.limits
    # Connections read their limits when they open: the new ones get these.
    server.limits = dataclasses.replace(
        server.limits,
        max_header_bytes=lim.max_header_bytes,
        max_body_bytes=lim.max_body_bytes,
        max_connections=lim.max_connections,
        idle_timeout=cfg.timeouts.keepalive,
    )


def _close(pools: Iterable[Pool]) -> None:
    for pool in pools:
        for b in list(pool.backends):
            pool.remove(b)
