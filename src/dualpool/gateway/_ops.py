"""Operating the gateway: readiness, live reload of the fleet YAML (SIGHUP), TLS.

readiness(gw)      /ready: ready while any pool can serve (spillover covers the
                   others); `degraded` names the pools without a healthy backend
attach_metrics(gw) dualpool_ready, dualpool_degraded, dualpool_pool_available,
                   dualpool_learned_bytes_per_token_sigma
reload(gw, path)   SIGHUP: re-read the YAML; a bad file keeps the old config (one log
                   line); pools' endpoints and limits change in place, open
                   connections and requests in flight are untouched; settings
                   that need a restart are named in the log
tls_context(cfg)   an SSLContext for the listening socket (listen.tls: {cert, key})
"""

from __future__ import annotations

import dataclasses
import logging
import math
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dualpool.errors import DualpoolError
from dualpool.gateway._backends import Backend
from dualpool.gateway._config import GatewayConfig, PoolConfig, TlsConfig, load_config
from dualpool.gateway._metrics import Gauge

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
# Pool settings applied in place; the rest of a pool's settings need a restart.
_LIVE_POOL_FIELDS = ("endpoints", "max_concurrency", "max_queue", "max_waiting", "max_kv_usage")


def _restart_needed(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """Settings that differ and cannot change in place."""
    out: list[str] = []
    for f in dataclasses.fields(GatewayConfig):
        if f.name == "pools":
            continue
        if getattr(old, f.name) != getattr(new, f.name):
            out.append(f.name)
    old_pools = {p.name: p for p in old.pools}
    if [p.name for p in old.pools] != [p.name for p in new.pools]:
        out.append("pools (names or order)")
        return out
    for p in new.pools:
        o = old_pools[p.name]
        for f in dataclasses.fields(PoolConfig):
            if f.name not in _LIVE_POOL_FIELDS and getattr(o, f.name) != getattr(p, f.name):
                out.append(f"pools.{p.name}.{f.name}")
    return out


def _live(old: PoolConfig, new: PoolConfig) -> PoolConfig:
    """The running pool config with the new file's live settings."""
    live = dict.fromkeys(_LIVE_POOL_FIELDS)
    if new.dns is not None or old.dns is not None:
        live.pop("endpoints")
    return dataclasses.replace(old, **{k: getattr(new, k) for k in live})


def _apply_pool(gw: Gateway, pool: Any, new: PoolConfig) -> list[str]:
    changes: list[str] = []
    old: PoolConfig = pool.cfg
    new = _live(old, new)
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
    for key in ("max_waiting", "max_kv_usage"):
        if getattr(new, key) != getattr(old, key):
            changes.append(f"pools.{pool.name}.{key}")
    pool.cfg = new  # read by the scrape loop (max_waiting, max_kv_usage)
    pool.refresh()
    return changes


def reload(gw: Gateway, path: str | Path, *, host: str | None, port: int | None) -> list[str]:
    """Apply the YAML at `path` to a running gateway; returns what changed.

    A file that does not read or validate changes nothing (one warning line).
    `host`/`port` are the command line's overrides, kept over the file's.
    """
    try:
        new = load_config(path)
    except DualpoolError as exc:
        log.warning("reload: %s; keeping the running config", exc)
        return []
    old = gw.config
    new = dataclasses.replace(
        new,
        host=old.host if host is not None else new.host,
        port=old.port if port is not None else new.port,
    )
    restart = _restart_needed(old, new)
    changes: list[str] = []
    if "pools (names or order)" not in restart:
        by_name = {p.name: p for p in new.pools}
        for pool in gw.pools:
            changes += _apply_pool(gw, pool, by_name[pool.name])
    log.warning(
        "reload of %s: applied %s%s",
        path,
        ", ".join(changes) or "nothing (no live setting changed)",
        f"; needs a restart, not applied: {', '.join(restart)}" if restart else "",
    )
    # The running config: live settings from the file, the others as they were.
    running = {p.name: p.cfg for p in gw.pools}
    gw.config = dataclasses.replace(old, pools=tuple(running.get(p.name, p) for p in old.pools))
    return changes
