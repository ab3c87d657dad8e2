"""Replicas sharing what they learn through Redis (`calibrator: {shared: redis://...}`).

Every `interval` seconds, on the gateway's event loop (off the request path):

    own = SharedCalibrator.own()          this replica's statistics, nothing merged
    one Lua script in Redis:              store own under our replica id, stamped with
                                          Redis's clock; drop entries older than ttl;
                                          return every entry and stamp
    install(own, others weighted by age)  the calibrator routes with the fleet's sums

Two hashes hold the fleet: `{namespace}:calibration:stats` (replica id -> JSON)
and `{namespace}:calibration:stamps` (replica id -> seconds). At start, before the
gateway listens, one round (bounded by `start_timeout`) reads the fleet, so a new
replica routes with the fleet's ratios from its first request; a replica that
finds an entry under its own id (restarted under the same name) takes it back as
its own, so its samples are neither lost nor counted twice.

Redis down: the replica keeps routing on what it holds and logs one line; every
round retries; when Redis answers again it logs one line and rejoins (what it
learned meanwhile is its own and is published then).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
from typing import TYPE_CHECKING, Any

from dualpool.budget.calibrator import Calibrator
from dualpool.budget.shared import (
    SharedCalibrator,
    add_snapshots,
    age_weight,
    compatible,
    merge_snapshots,
)
from dualpool.errors import ConfigError
from dualpool.gateway._config import SharedCalibrationConfig
from dualpool.gateway._metrics import Gauge

if TYPE_CHECKING:
    from dualpool.gateway._gateway import Gateway

__all__ = ["SharedCalibration", "default_replica_id"]

log = logging.getLogger("dualpool.gateway")

# Store ours (unless ARGV[2] is empty), stamped with Redis's clock; drop the stale;
# return [now, stats..., stamps...]. Floats go back as strings: Lua numbers would
# be truncated to integers in the reply.
_ROUND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local stamp = string.format('%.6f', now)
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[1], stamp)
end
local ttl = tonumber(ARGV[3])
local stamps = redis.call('HGETALL', KEYS[2])
for i = 1, #stamps, 2 do
  if now - tonumber(stamps[i + 1]) > ttl then
    redis.call('HDEL', KEYS[1], stamps[i])
    redis.call('HDEL', KEYS[2], stamps[i])
  end
end
local keep = math.ceil(ttl)
redis.call('EXPIRE', KEYS[1], keep)
redis.call('EXPIRE', KEYS[2], keep)
return {stamp, redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
"""


def default_replica_id(port: int) -> str:
    """hostname:port: stable across restarts on a fixed port (a pod's name in Kubernetes).

    On an ephemeral port (0) nothing is stable: a random name, never taken back.
    """
    host = socket.gethostname()
    return f"{host}:{port}" if port else f"{host}:pid{os.getpid()}-{secrets.token_hex(4)}"


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


class SharedCalibration:
    """One replica's membership in the fleet's shared calibration."""

    def __init__(
        self,
        calibrator: Calibrator,
        config: SharedCalibrationConfig,
        replica_id: str,
    ) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:
            raise ConfigError(
                "calibrator.shared",
                "needs the Redis client: pip install 'dualpool[redis]'",
            ) from None
        self.config = config
        self.replica_id = replica_id
        self.shared = SharedCalibrator(calibrator)
        self._client = aioredis.from_url(
            config.url,
            decode_responses=True,
            socket_timeout=config.timeout,
            socket_connect_timeout=config.timeout,
        )
        self._script = self._client.register_script(_ROUND)
        ns = config.namespace
        self._keys = [f"{ns}:calibration:stats", f"{ns}:calibration:stamps"]
        self.connected = False
        # Until the first answer: our own entry may still be waiting in Redis.
        self._joined = False
        self._down_logged = False
        self.rounds = 0
        self.peers = 0
        self.last_error = ""
        self._closing = False

    # ---- one round --------------------------------------------------------------------
    async def _call(self, payload: str) -> tuple[float, dict[str, str], dict[str, str]]:
        cfg = self.config
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
        # cancellation that arrives as the call completes (gh-86296), and the
        # periodic round then outlived the gateway's shutdown.
        async with asyncio.timeout(cfg.timeout):
            reply = await self._script(keys=self._keys, args=[self.replica_id, payload, cfg.ttl])
        return float(reply[0]), _pairs(reply[1]), _pairs(reply[2])

    async def sync(self) -> bool:
        """Publish ours, merge the others'. False (and one log line) when Redis is away."""
        try:
            if not self._joined:
                # Read first: an entry under our id is what we published before a restart.
                _, stats, _ = await self._call("")
                mine = stats.get(self.replica_id)
                if mine is not None:
                    published = json.loads(mine)
                    # Published by another version under this id (an upgrade in
                    # place): not summable with ours; the next round replaces it.
                    if compatible(published):
                        self._adopt(published)
                self._joined = True
            own = self.shared.own()
            now, stats, stamps = await self._call(json.dumps(own, separators=(",", ":")))
        except Exception as exc:  # any failure of the round: keep routing on what we hold
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self.connected or not self._down_logged:
                log.warning(
                    "shared calibration: Redis at %s unavailable (%s); routing on this "
                    "replica's statistics until it is back",
                    self.config.url,
                    self.last_error,
                )
                self._down_logged = True
            self.connected = False
            return False
        # Parsing and summing the others' statistics needs nothing of ours: a thread.
        merged, peers = await asyncio.to_thread(self._merge_others, now, stats, stamps)
        # Requests were answered meanwhile: what they taught is in the calibrator,
        # so take our own part again now (no await until install).
        self.shared.install(self.shared.own(), merged)
        if not self.connected and self._down_logged:
            log.warning("shared calibration: Redis back; merged %d other replicas", peers)
        self.connected = True
        self._down_logged = False
        self.rounds += 1
        self.peers = peers
        return True

    def _merge_others(
        self, now: float, stats: dict[str, str], stamps: dict[str, str]
    ) -> tuple[dict[str, Any], int]:
        cfg = self.config
        snaps: list[Any] = []
        weights: list[float] = []
        for rid, text in stats.items():
            if rid == self.replica_id:
                continue
            try:
                snap = json.loads(text)
                age = now - float(stamps.get(rid, now))
            except ValueError:
                continue
            if not isinstance(snap, dict) or not compatible(snap):
                # Another snapshot version (a rolling upgrade): not summable with ours.
                continue
            snaps.append(snap)
            weights.append(age_weight(age, cfg.grace, cfg.half_life))
        return merge_snapshots(snaps, weights), len(snaps)

    def _adopt(self, published: dict[str, Any]) -> None:
        """Take back what this replica id published before (a restart): it is ours."""
        own = add_snapshots(self.shared.own(), published)
        self.shared.install(own, self.shared.others())
        log.info("shared calibration: took back the statistics published as %s", self.replica_id)

    # ---- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """One round before the gateway listens (bounded by start_timeout)."""
        try:
            await asyncio.wait_for(self.sync(), self.config.start_timeout)
        except TimeoutError:
            log.warning(
                "shared calibration: no answer from %s within %gs; starting on local statistics",
                self.config.url,
                self.config.start_timeout,
            )

    async def run(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.config.interval)
            if not self._closing:
                await self.sync()

    async def close(self) -> None:
        """Publish once more (what was learned since the last round), then disconnect."""
        self._closing = True
        if self.connected:
            await self.sync()
        with contextlib.suppress(Exception):  # closing a dead connection: nothing to do
            await self._client.aclose()

    def attach_metrics(self, gw: Gateway) -> None:
        """dualpool_shared_calibration_{connected,peers} on the gateway's /metrics."""
        registry = gw.metrics.registry
        connected = registry.add(
            Gauge(
                "dualpool_shared_calibration_connected",
                "1 while the last round with the shared-calibration Redis succeeded.",
            )
        )
        peers = registry.add(
            Gauge(
                "dualpool_shared_calibration_peers",
                "Other replicas whose statistics were merged in the last round.",
            )
        )

        def collect() -> None:
            connected.set(1.0 if self.connected else 0.0)
            peers.set(float(self.peers))

        gw.metrics.add_collector(collect)
