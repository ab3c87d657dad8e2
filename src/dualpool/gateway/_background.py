"""Work off the request path: probes, scrapes, DNS, calibrator snapshots, idle sweeps.

Each loop sets plain fields the request path reads (`Backend.healthy`,
`.waiting`, `.kv_usage`, `.saturated`, `Pool.backends`); none of them is ever
awaited by a request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from dualpool.gateway._backends import Backend, Pool
from dualpool.http import ConnectError, UpstreamError, fetch
from dualpool.policy import PoolSignal

if TYPE_CHECKING:
    from dualpool.gateway._gateway import Gateway

__all__ = [
    "health_loop",
    "outlier_loop",
    "parse_vllm_metrics",
    "resolve",
    "resolve_loop",
    "scrape_loop",
    "snapshot_loop",
    "timeout_loop",
    "write_snapshot",
]

log = logging.getLogger("dualpool.gateway")


def parse_vllm_metrics(text: str) -> tuple[float, float]:
    """(num_requests_waiting summed over engines, kv_cache_usage_perc max) from /metrics."""
    waiting = 0.0
    kv = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:num_requests_waiting"):
            name_end = line.find("{")
            if name_end < 0:
                name_end = line.find(" ")
            if line[:name_end] == "vllm:num_requests_waiting":
                waiting += _value(line)
        elif line.startswith("vllm:kv_cache_usage_perc"):
            name_end = line.find("{")
            if name_end < 0:
                name_end = line.find(" ")
            if line[:name_end] == "vllm:kv_cache_usage_perc":
                kv = max(kv, _value(line))
    return waiting, kv


def _value(line: str) -> float:
    try:
        return float(line.rsplit("}", 1)[-1].split()[0])
    except (ValueError, IndexError):
        return 0.0


def _auth(pool: Pool) -> bytes:
    return pool.auth_header


async def probe(gw: Gateway, pool: Pool, backend: Backend) -> None:
    cfg = gw.config.health
    try:
        status, _ = await fetch(
            backend.host, backend.port, "/health", cfg.timeout, headers=_auth(pool)
        )
    except UpstreamError as exc:
        # Nothing listening (refused) is out at once; other failures count up.
        refused = type(exc) is ConnectError
        if backend.failed(f"probe: {exc}", hard=refused, unhealthy_after=cfg.unhealthy_after):
            gw.set_health(backend, False, backend.last_error)
        return
    if status == 200:
        if not backend.healthy:
            if time.monotonic() >= backend.open_until:  # an ejected outlier waits its time
                gw.set_health(backend, True)
        else:
            backend.succeeded()
    elif backend.failed(f"probe: HTTP {status}", hard=False, unhealthy_after=cfg.unhealthy_after):
        gw.set_health(backend, False, backend.last_error)


async def health_loop(gw: Gateway) -> None:
    while True:
        await asyncio.sleep(gw.config.health.interval)  # reload may change it
        jobs = [probe(gw, p, b) for p in gw.pools for b in list(p.backends)]
        await asyncio.gather(*jobs, return_exceptions=True)


async def outlier_loop(gw: Gateway) -> None:
    interval = gw.config.health.outlier_interval
    while True:
        await asyncio.sleep(interval)
        gw.detect_outliers()


async def scrape(gw: Gateway, pool: Pool, backend: Backend) -> None:
    try:
        status, body = await fetch(
            backend.host, backend.port, "/metrics", gw.config.health.timeout, headers=_auth(pool)
        )
    except UpstreamError:
        return
    if status != 200:
        return
    waiting, kv = parse_vllm_metrics(body.decode("utf-8", "replace"))
    backend.observe_load(waiting, kv, pool.cfg)


async def scrape_loop(gw: Gateway) -> None:
    while True:
        # Read each time: a reload may change it (0: no scraping).
        await asyncio.sleep(gw.config.health.metrics_interval or 1.0)
        if not gw.config.health.metrics_interval:
            continue
        jobs = [scrape(gw, p, b) for p in gw.pools for b in list(p.backends) if b.healthy]
        await asyncio.gather(*jobs, return_exceptions=True)
        for p in gw.pools:
            p.refresh()
        now = gw.loop.time()
        for s in gw.models.served:
            pools = s.pools
            if s.router.controller is not None and len(pools) > 1:
                # The adaptive threshold (docs/adaptive.md): the two smallest pools' load.
                s.router.adapt(now, pool_signal(pools[0], now), pool_signal(pools[1], now))


def pool_signal(pool: Pool, now: float) -> PoolSignal | None:
    """A pool's scraped load for the adaptive threshold; None with no healthy backend."""
    up = pool.healthy
    if not up:
        return None
    return PoolSignal(
        now, sum(b.waiting for b in up) / len(up), sum(b.kv_usage for b in up) / len(up)
    )


async def resolve(name: str, port: int, server: tuple[str, int] | None = None) -> list[str]:
    """Addresses of a DNS name (a headless service lists one per ready pod); from
    `server` when given (gateway/_dns.py), else from the system resolver."""
    if server is not None:
        from dualpool.gateway._dns import query_addresses

        return await query_addresses(name, server)
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


async def resolve_loop(gw: Gateway, pool: Pool) -> None:
    dns = pool.cfg.dns
    assert dns is not None
    while True:
        await asyncio.sleep(dns.interval)
        if pool not in gw.pools:
            return  # removed by a reload
        try:
            addrs = await resolve(dns.name, dns.port, dns.server)
        except OSError as exc:
            log.warning("pool %s: cannot resolve %s: %s", pool.name, dns.name, exc)
            continue
        apply_addresses(gw, pool, addrs, dns.port)


def apply_addresses(gw: Gateway, pool: Pool, addrs: list[str], port: int) -> None:
    current = {b.host: b for b in pool.backends}
    wanted = set(addrs)
    for host, b in current.items():
        if host not in wanted:
            log.warning("pool %s: backend %s left DNS", pool.name, b.name)
            pool.remove(b)
    for host in addrs:
        if host not in current:
            log.warning("pool %s: backend %s:%d joined from DNS", pool.name, host, port)
            pool.add(Backend(pool.name, host, port, gw.config.limits.max_idle_per_backend))


def write_snapshot(gw: Gateway, path: Path) -> None:
    snap = gw.router.estimator.calibrator.snapshot()
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(snap))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot save the calibrator snapshot to %s: %s", path, exc)


async def snapshot_loop(gw: Gateway, path: Path, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        write_snapshot(gw, path)


async def timeout_loop(gw: Gateway) -> None:
    """One timer for every exchange's first-byte and idle timeout (not one per request)."""
    t = gw.config.timeouts
    period = min(0.5, t.first_byte / 4, t.idle / 4)
    while True:
        await asyncio.sleep(period)
        gw.sweep_timeouts()
