"""Start, run and stop a gateway: discovery, router, listening socket, background loops.

start():  resolve backends ─► /v1/models for unknown max_model_len ─► Router
          ─► restore snapshot ─► listen ─► background loops
stop():   stop accepting ─► close idle connections ─► wait for in-flight
          (timeouts.drain) ─► cut the rest ─► save snapshot
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
from typing import TYPE_CHECKING, Any, NoReturn

from dualpool.budget import BudgetEstimator
from dualpool.errors import ConfigError
from dualpool.gateway import _background as bg
from dualpool.gateway import _ops as ops
from dualpool.gateway._backends import Backend, Pool
from dualpool.gateway._config import GatewayConfig, PoolConfig
from dualpool.gateway._gateway import Gateway
from dualpool.gateway._models import build_models
from dualpool.gateway._telemetry import configure_logging
from dualpool.http import HttpServer, ServerLimits, UpstreamError, fetch

if TYPE_CHECKING:
    from dualpool.gateway._shared_calibration import SharedCalibration

__all__ = ["GatewayServer", "run", "settle_heap"]

log = logging.getLogger("dualpool.gateway")


async def _backends_of(cfg: PoolConfig, max_idle: int) -> list[Backend]:
    if cfg.dns is not None:
        try:
            addrs = await bg.resolve(cfg.dns.name, cfg.dns.port, cfg.dns.server)
        except OSError as exc:
            log.warning("pool %s: cannot resolve %s yet: %s", cfg.name, cfg.dns.name, exc)
            addrs = []
        return [Backend(cfg.name, a, cfg.dns.port, max_idle) for a in addrs]
    return [Backend(cfg.name, h, p, max_idle) for h, p in cfg.endpoints]


async def _discover(
    cfg: PoolConfig, backends: list[Backend], timeout: float, deadline: float
) -> tuple[int | None, str | None]:
    """(max_model_len, model id) from the first backend whose /v1/models answers."""
    loop = asyncio.get_running_loop()
    auth = (
        b"authorization: Bearer " + cfg.backend_api_key.encode() + b"\r\n"
        if cfg.backend_api_key
        else b""
    )
    last = "no backend"
    while True:
        for b in backends:
            try:
                status, body = await fetch(b.host, b.port, "/v1/models", timeout, headers=auth)
                if status != 200:
                    last = f"{b.name}: HTTP {status}"
                    continue
                data = json.loads(body)["data"][0]
                mml = data.get("max_model_len")
                return (mml if type(mml) is int and mml > 0 else None), data.get("id")
            except (UpstreamError, ValueError, KeyError, IndexError, TypeError) as exc:
                last = f"{b.name}: {exc}"
        if loop.time() >= deadline:
            if cfg.max_model_len is None:
                _fail(cfg, last)
            return None, None
        await asyncio.sleep(0.5)


def _fail(cfg: PoolConfig, last: str) -> NoReturn:
    raise ConfigError(
        f"pools.{cfg.name}.max_model_len",
        f"not set and no backend told it from /v1/models in time (last: {last}); "
        "set it in the config",
    )


class GatewayServer:
    """A gateway bound to a socket; `start()`, then `stop()` (or `run_until_signal`)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.gateway: Gateway | None = None
        self._server: HttpServer | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.port = config.port
        self.shared: SharedCalibration | None = None

    async def start(self, *, host: str | None = None, port: int | None = None) -> Gateway:
        cfg = self.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.timeouts.discovery
        per_pool = [await _backends_of(p, cfg.limits.max_idle_per_backend) for p in cfg.pools]
        lens: dict[str, int] = {}
        model = cfg.model
        for pcfg, backends in zip(cfg.pools, per_pool, strict=True):
            if pcfg.max_model_len is not None and model is not None:
                lens[pcfg.name] = pcfg.max_model_len
                continue
            if pcfg.max_model_len is not None:
                # Only the model name is missing: one quick try, not fatal.
                found, mid = await _discover(pcfg, backends, cfg.health.timeout, loop.time())
                lens[pcfg.name] = pcfg.max_model_len
            else:
                found, mid = await _discover(pcfg, backends, cfg.health.timeout, deadline)
                if found is None:
                    _fail(pcfg, "no max_model_len in /v1/models")
                assert found is not None
                lens[pcfg.name] = found
                log.info("pool %s: max_model_len %d from /v1/models", pcfg.name, found)
            if model is None and mid:
                model = str(mid)
        estimator = BudgetEstimator(cfg.estimator)
        pools: dict[str, Pool] = {}
        for pcfg, backends in zip(cfg.pools, per_pool, strict=True):
            pool = pools[pcfg.name] = Pool(pcfg, 0, lens[pcfg.name])
            for b in backends:
                pool.add(b)
        models = build_models(cfg, model or "unknown", pools, estimator)
        router = models.default.router
        snap = cfg.calibrator.snapshot
        if snap is not None and snap.exists():
            try:
                router.estimator.calibrator.restore(json.loads(snap.read_text()))
                log.info("calibrator restored from %s", snap)
            except (OSError, ValueError) as exc:
                raise ConfigError("calibrator.snapshot", f"cannot load {snap}: {exc}") from None
        gw = Gateway(cfg, models, loop)
        self.gateway = gw
        if cfg.calibrator.shared is not None:
            # Before listening: the first request routes with the fleet's ratios.
            self.shared = await _join_shared(gw, cfg, port)
        lim = cfg.limits
        limits = ServerLimits(
            max_header_bytes=lim.max_header_bytes,
            max_body_bytes=lim.max_body_bytes,
            max_connections=lim.max_connections,
            idle_timeout=cfg.timeouts.keepalive,
        )
        server = self._server = HttpServer(gw, limits, loop=loop)
        gw.server = server
        server.connections = gw.connections  # one set: /metrics counts it
        ops.attach_metrics(gw)
        self.port = await server.listen(
            host if host is not None else cfg.host,
            cfg.port if port is None else port,
            ssl=ops.tls_context(cfg.tls),
        )
        self._tasks.append(loop.create_task(bg.health_loop(gw)))
        if cfg.health.outlier_interval > 0:
            self._tasks.append(loop.create_task(bg.outlier_loop(gw)))
        self._tasks.append(loop.create_task(bg.scrape_loop(gw)))  # idle while 0
        for pool in gw.pools:
            if pool.cfg.dns is not None:
                gw.spawn(bg.resolve_loop(gw, pool))
        if snap is not None and cfg.calibrator.save_interval > 0:
            self._tasks.append(
                loop.create_task(bg.snapshot_loop(gw, snap, cfg.calibrator.save_interval))
            )
        if self.shared is not None:
            self._tasks.append(loop.create_task(self.shared.run()))
        self._tasks.append(loop.create_task(bg.timeout_loop(gw)))
        log.info(
            "listening on %s:%d; pools %s",
            host or cfg.host,
            self.port,
            ", ".join(
                f"{p.name}(len={p.max_model_len}, backends={len(p.backends)})" for p in gw.pools
            ),
        )
        return gw

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), then close."""
        gw = self.gateway
        if self._server is not None:
            self._server.close()
        if gw is None:
            return
        gw.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + gw.config.timeouts.drain
        server = self._server
        assert server is not None
        while server.close_idle() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if gw.connections:
            # The deadline: what is still in flight ends with a clean error (a stream
            # with an SSE error event and its chunked end), then the connections close.
            gw.cut()
            await asyncio.sleep(0.05)
            server.close_all()
            await asyncio.sleep(0.05)
            server.abort_all()
        await server.wait_closed()
        tasks = self._tasks + list(gw.tasks)
        await _cancel_all(tasks)
        for pool in gw.pools:
            for b in pool.backends:
                b.close_idle()
        if self.shared is not None:
            await self.shared.close()
        snap = self.config.calibrator.snapshot
        if snap is not None:
            bg.write_snapshot(gw, snap)
        log.info("stopped")


async def _join_shared(gw: Gateway, cfg: GatewayConfig, port: int | None) -> SharedCalibration:
    from dualpool.gateway._shared_calibration import SharedCalibration, default_replica_id

    shared_cfg = cfg.calibrator.shared
    assert shared_cfg is not None
    rid = shared_cfg.replica_id or default_replica_id(cfg.port if port is None else port)
    shared = SharedCalibration(gw.router.estimator.calibrator, shared_cfg, rid)
    shared.attach_metrics(gw)
    await shared.start()
    return shared


async def _cancel_all(tasks: list[asyncio.Task[Any]], rounds: int = 10) -> None:
    """Cancel the background tasks and wait for them, bounded.

    A task may swallow one cancellation (Python 3.11's wait_for does when the awaited
    call completes at the same moment, gh-86296) and go on; waiting for it unbounded
    kept a SIGTERM'd gateway alive forever. Each round cancels what is left again
    and waits at most a second; what still runs after that is left to the exit."""
    pending = {t for t in tasks if not t.done()}
    for _ in range(rounds):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
    if pending:
        log.warning("shutdown: %d background task(s) did not stop; exiting anyway", len(pending))
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit


def settle_heap() -> None:
    """Once started: collect, then freeze what is alive into the permanent generation.

    The modules, config, router and tables alive after start-up (~25k objects) live as
    long as the process; left in generation 2, every full collection walks them again,
    a 4-9 ms pause of the event loop that lands on whatever request is in flight (the
    soak's added-latency tail). Frozen, full collections walk only what requests made."""
    gc.collect()
    gc.freeze()


async def _main(
    config: GatewayConfig, config_path: str | None, host: str | None, port: int | None
) -> int:
    server = GatewayServer(config)
    gw = await server.start()
    settle_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if config_path is not None:
        # SIGHUP: re-read the YAML; live settings change in place (gateway/_ops.py).
        loop.add_signal_handler(
            signal.SIGHUP,
            lambda: gw.spawn(ops.reload(gw, config_path, host=host, port=port)),
        )
    await stop.wait()
    log.info("signal received: draining (up to %gs)", config.timeouts.drain)
    await server.stop()
    return 0


def run(
    config: GatewayConfig,
    config_path: str | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT, then drain and return 0. Uses uvloop when present.

    With `config_path`, SIGHUP reloads that file (`host`/`port`: command-line
    overrides kept over the file's)."""
    configure_logging(config.log.level)
    main = _main(config, config_path, host, port)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(main)
    return uvloop.run(main)
