"""The gateway's configuration: a YAML file read into typed, validated dataclasses.

Every mistake raises `ConfigError` naming the field (`pools[1].endpoints[0]`,
`timeouts.connect`, ...) with the value seen and what is expected, so
`dualpool serve --check` can print one line and exit 2.

    listen: {host, port}
    model:            served model name (default: discovered from /v1/models)
    pools:            [{name, endpoints | dns, max_model_len, threshold, limits...}]
    estimator:        passed to EstimatorConfig.from_mapping
    spillover, backpressure, retries, timeouts, health, limits, auth, log, calibrator
    routing:          {adaptive: true | {AdaptiveConfig settings}} (docs/adaptive.md)
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dualpool.budget import EstimatorConfig
from dualpool.errors import ConfigError
from dualpool.policy.adaptive import AdaptiveConfig

__all__ = [
    "AuthConfig",
    "BackpressureConfig",
    "CalibratorConfig",
    "DnsEndpoints",
    "GatewayConfig",
    "HealthConfig",
    "LimitsConfig",
    "LogConfig",
    "ModelConfig",
    "PoolConfig",
    "RetryConfig",
    "SharedCalibrationConfig",
    "TimeoutConfig",
    "TlsConfig",
    "load_config",
    "parse_config",
]

_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True, slots=True)
class DnsEndpoints:
    # DNS name whose A/AAAA records are the pool's backends (a headless service).
    name: str
    port: int
    # Seconds between re-resolutions.
    interval: float = 10.0
    # Nameserver (host, port) asked directly; None: the system resolver (getaddrinfo).
    server: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class PoolConfig:
    name: str
    # Static backends as (host, port); empty when `dns` is set.
    endpoints: tuple[tuple[str, int], ...] = ()
    dns: DnsEndpoints | None = None
    # The pool's vLLM --max-model-len; None: read from the backends' /v1/models.
    max_model_len: int | None = None
    # Largest budget routed here first (B_short); None: max_model_len.
    threshold: int | None = None
    # Requests in flight through this gateway to the pool; beyond it the pool is
    # saturated and requests wait (bounded) or spill.
    max_concurrency: int = 256
    # Requests that may wait for a slot; beyond it: 429.
    max_queue: int = 256
    # A backend whose scraped vllm:num_requests_waiting passes this is saturated
    # (dualpool.fleet.over_limits, the simulator's rule too).
    max_waiting: int = 16
    # ... or whose vllm:kv_cache_usage_perc (0..1) passes this.
    max_kv_usage: float = 0.97
    # Bearer key sent to this pool's backends (vLLM --api-key), if any.
    backend_api_key: str | None = None


@dataclass(frozen=True, slots=True)
class BackpressureConfig:
    # Longest a request waits for a slot in a full pool before 429.
    max_wait: float = 2.0
    # Retry-After (seconds) on 429.
    retry_after: int = 1


@dataclass(frozen=True, slots=True)
class RetryConfig:
    # Other backends of the same pool tried after a failure before the first byte.
    same_pool: int = 2
    # Larger pools tried after the same pool gave up.
    larger_pools: int = 1


@dataclass(frozen=True, slots=True)
class TimeoutConfig:
    # TCP connect to a backend.
    connect: float = 3.0
    # Until the backend's response headers. A non-streaming vLLM answer only starts
    # once generation is done, so this bounds a whole non-streaming request.
    first_byte: float = 600.0
    # Longest silence between two pieces of a streamed answer.
    idle: float = 300.0
    # On SIGTERM: how long in-flight requests and streams may still run.
    drain: float = 30.0
    # A client connection with no request for this long is closed.
    keepalive: float = 75.0
    # At start: how long to wait for a backend to tell max_model_len (/v1/models).
    discovery: float = 60.0


@dataclass(frozen=True, slots=True)
class HealthConfig:
    # Seconds between active probes (GET /health) of every backend.
    interval: float = 5.0
    # Seconds between scrapes of each backend's /metrics (0 disables).
    metrics_interval: float = 2.0
    # Consecutive failures (5xx, timeouts) that take a backend out; a refused
    # connection takes it out at once.
    unhealthy_after: int = 3
    # Timeout of one probe or scrape.
    timeout: float = 2.0
    # Outlier detection (the circuit breaker, docs/reliability.md): seconds between
    # evaluations (0 disables), the error rate and the mean time to first byte (times
    # the pool's median, and over the floor in seconds) that eject a backend with at
    # least min_requests answers in the interval, and the base ejection time.
    outlier_interval: float = 10.0
    max_error_rate: float = 0.5
    min_requests: int = 20
    latency_factor: float = 3.0
    latency_floor: float = 1.0
    ejection_time: float = 30.0


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    # Largest request body accepted (413 beyond).
    max_body_bytes: int = 8 * 1024 * 1024
    # Client connections open at once; more are closed at accept.
    max_connections: int = 4096
    # Largest request head (request line + headers).
    max_header_bytes: int = 64 * 1024
    # Idle keep-alive connections kept per backend.
    max_idle_per_backend: int = 128


@dataclass(frozen=True, slots=True)
class AuthConfig:
    # Bearer keys clients may use; empty: no authentication.
    api_keys: frozenset[str] = frozenset()
    # Key of the admin view; None: admin view open only when api_keys is empty.
    admin_key: str | None = None
    # Bearer key of /metrics; None: /metrics is open (Prometheus scrapes it).
    metrics_key: str | None = None


@dataclass(frozen=True, slots=True)
class TlsConfig:
    # PEM certificate chain and private key of the listening socket.
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class LogConfig:
    # Level of the gateway's own log.
    level: str = "info"
    # Level at which the one-line-per-request JSON access log is written.
    access: str = "info"


@dataclass(frozen=True, slots=True)
class SharedCalibrationConfig:
    # Redis holding every replica's own statistics: redis://host:port/db (rediss:// for TLS).
    url: str
    # Seconds between rounds (publish ours, merge the others').
    interval: float = 1.0
    # This replica's name in Redis; None: hostname:port. A replica restarted under the
    # same name takes its published statistics back; under a new one its old entry fades.
    replica_id: str | None = None
    # Key prefix: fleets sharing one Redis keep apart by namespace.
    namespace: str = "dualpool"
    # Another replica's entry keeps full weight this many seconds after its last
    # publish, then halves every half_life seconds; removed after ttl seconds.
    grace: float = 10.0
    half_life: float = 300.0
    ttl: float = 3600.0
    # Timeout of one Redis round; at start, how long to wait for the fleet's view.
    timeout: float = 1.0
    start_timeout: float = 3.0


@dataclass(frozen=True, slots=True)
class CalibratorConfig:
    # Snapshot file: loaded at start if present, saved periodically and on shutdown.
    snapshot: Path | None = None
    # Seconds between saves (0: only on shutdown).
    save_interval: float = 60.0
    # Calibration shared between replicas through Redis; None: each learns alone.
    shared: SharedCalibrationConfig | None = None


@dataclass(frozen=True, slots=True)
class ModelConfig:
    # The model id clients send (and /v1/models lists).
    name: str
    # Other names that route to this model.
    aliases: tuple[str, ...] = ()
    # Names of this model's pools (in GatewayConfig.pools).
    pools: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    pools: tuple[PoolConfig, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    # TLS on the listening socket (listen.tls); None: plain HTTP.
    tls: TlsConfig | None = None
    # Served model name for /v1/models; None: the first backend's model id.
    model: str | None = None
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    # `models:` (several models, each with its own pools; `pools` then lists them
    # all), routed by the request's `model` (gateway/_models.py). Empty with `pools:`.
    models: tuple[ModelConfig, ...] = ()
    spillover: bool = True
    backpressure: BackpressureConfig = field(default_factory=BackpressureConfig)
    retries: RetryConfig = field(default_factory=RetryConfig)
    timeouts: TimeoutConfig = field(default_factory=TimeoutConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    log: LogConfig = field(default_factory=LogConfig)
    calibrator: CalibratorConfig = field(default_factory=CalibratorConfig)
    # routing.adaptive: move the short pool's threshold online (None: static).
    adaptive: AdaptiveConfig | None = None


# ---- readers: each names the field it reads ----------------------------------------


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(where, f"must be a mapping, got {type(value).__name__}")
    return value


def _known(data: Mapping[str, Any], where: str, keys: tuple[str, ...]) -> None:
    for key in data:
        if key not in keys:
            prefix = f"{where}." if where else ""
            raise ConfigError(f"{prefix}{key}", f"unknown setting; known: {', '.join(keys)}")


def _int(data: Mapping[str, Any], key: str, where: str, default: int, *, lo: int = 0) -> int:
    value = data.get(key, default)
    if type(value) is not int or value < lo:
        raise ConfigError(f"{where}.{key}", f"must be an integer >= {lo}, got {value!r}")
    return value


def _num(
    data: Mapping[str, Any], key: str, where: str, default: float, *, positive: bool = True
) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}.{key}", f"must be a number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ConfigError(
            f"{where}.{key}", f"must be {'> 0' if positive else '>= 0'}, got {value!r}"
        )
    return float(value)


def _bool(data: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = data.get(key, default)
    if type(value) is not bool:
        raise ConfigError(
            f"{where}.{key}" if where else key, f"must be true or false, got {value!r}"
        )
    return value


def _str(data: Mapping[str, Any], key: str, where: str, default: str | None) -> str | None:
    value = data.get(key, default)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(
            f"{where}.{key}" if where else key, f"must be a non-empty string, got {value!r}"
        )
    return value


def _secret(value: Any, where: str) -> str:
    """A key given inline or as {env: NAME} (kept out of the file)."""
    if isinstance(value, Mapping) and set(value) == {"env"}:
        name = value["env"]
        got = os.environ.get(str(name))
        if not got:
            raise ConfigError(where, f"environment variable {name!r} is not set or empty")
        return got
    if not isinstance(value, str) or not value:
        raise ConfigError(where, "must be a non-empty string or {env: VARIABLE}")
    return value


def parse_endpoint(value: Any, where: str) -> tuple[str, int]:
    """`http://host:port` (a base URL; a trailing /v1 is tolerated) -> (host, port)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(where, f"must be a base URL like http://10.0.0.5:8000, got {value!r}")
    url = urllib.parse.urlsplit(value if "://" in value else f"http://{value}")
    if url.scheme != "http":
        raise ConfigError(where, f"only http:// backends are supported, got {value!r}")
    if url.path not in ("", "/", "/v1", "/v1/") or url.query or url.fragment:
        raise ConfigError(where, f"must be a base URL without a path, got {value!r}")
    try:
        port = url.port or 80
    except ValueError:
        raise ConfigError(where, f"invalid port in {value!r}") from None
    host = url.hostname
    if not host:
        raise ConfigError(where, f"missing host in {value!r}")
    return host, port


def _hostport(value: Any, where: str, default_port: int) -> tuple[str, int]:
    """`host` or `host:port` (an IPv6 address in brackets: `[::1]:53`)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(where, f"must be host or host:port, got {value!r}")
    url = urllib.parse.urlsplit(f"//{value}")
    try:
        port = url.port or default_port
    except ValueError:
        raise ConfigError(where, f"invalid port in {value!r}") from None
    if not url.hostname:
        raise ConfigError(where, f"missing host in {value!r}")
    return url.hostname, port


_POOL_KEYS = (
    "name",
    "endpoints",
    "dns",
    "max_model_len",
    "threshold",
    "max_concurrency",
    "max_queue",
    "max_waiting",
    "max_kv_usage",
    "backend_api_key",
)


def _pool(data: Any, i: int) -> PoolConfig:
    where = f"pools[{i}]"
    data = _mapping(data, where)
    _known(data, where, _POOL_KEYS)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.name", f"must be a non-empty string, got {name!r}")
    where = f"pools.{name}"
    endpoints: tuple[tuple[str, int], ...] = ()
    dns: DnsEndpoints | None = None
    if "endpoints" in data and "dns" in data:
        raise ConfigError(where, "set either endpoints or dns, not both")
    if "endpoints" in data:
        raw = data["endpoints"]
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"{where}.endpoints", "must be a non-empty list of base URLs")
        endpoints = tuple(parse_endpoint(v, f"{where}.endpoints[{j}]") for j, v in enumerate(raw))
        if len(set(endpoints)) != len(endpoints):
            raise ConfigError(f"{where}.endpoints", "lists the same backend twice")
    elif "dns" in data:
        d = _mapping(data["dns"], f"{where}.dns")
        _known(d, f"{where}.dns", ("name", "port", "interval", "server"))
        dname = _str(d, "name", f"{where}.dns", None)
        if dname is None:
            raise ConfigError(f"{where}.dns.name", "is required")
        port = _int(d, "port", f"{where}.dns", 8000, lo=1)
        if port > 65535:
            raise ConfigError(f"{where}.dns.port", f"must be <= 65535, got {port}")
        server = d.get("server")
        dns = DnsEndpoints(
            dname,
            port,
            _num(d, "interval", f"{where}.dns", 10.0),
            None if server is None else _hostport(server, f"{where}.dns.server", 53),
        )
    else:
        raise ConfigError(f"{where}.endpoints", "is required (or dns: {name, port})")
    mml = data.get("max_model_len")
    if mml is not None and (type(mml) is not int or mml < 1):
        raise ConfigError(f"{where}.max_model_len", f"must be a positive integer, got {mml!r}")
    thr = data.get("threshold")
    if thr is not None and (type(thr) is not int or thr < 1):
        raise ConfigError(f"{where}.threshold", f"must be a positive integer, got {thr!r}")
    if thr is not None and mml is not None and thr > mml:
        raise ConfigError(f"{where}.threshold", f"{thr} exceeds max_model_len {mml}")
    kv = _num(data, "max_kv_usage", where, 0.97)
    if kv > 1.0:
        raise ConfigError(f"{where}.max_kv_usage", f"is a fraction in (0, 1], got {kv}")
    key = data.get("backend_api_key")
    return PoolConfig(
        name=name,
        endpoints=endpoints,
        dns=dns,
        max_model_len=mml,
        threshold=thr,
        max_concurrency=_int(data, "max_concurrency", where, 256, lo=1),
        max_queue=_int(data, "max_queue", where, 256),
        max_waiting=_int(data, "max_waiting", where, 16, lo=1),
        max_kv_usage=kv,
        backend_api_key=None if key is None else _secret(key, f"{where}.backend_api_key"),
    )


_TOP_KEYS = (
    "listen",
    "model",
    "models",
    "pools",
    "estimator",
    "spillover",
    "backpressure",
    "retries",
    "timeouts",
    "health",
    "limits",
    "auth",
    "log",
    "calibrator",
    "routing",
)


def parse_config(data: Any) -> GatewayConfig:
    """Validate a parsed YAML document; raises `ConfigError` naming the field."""
    data = _mapping(data, "config")
    _known(data, "", _TOP_KEYS)
    listen = _mapping(data.get("listen"), "listen")
    _known(listen, "listen", ("host", "port", "tls"))
    host = _str(listen, "host", "listen", "127.0.0.1") or "127.0.0.1"
    port = _int(listen, "port", "listen", 8000)
    if port > 65535:
        raise ConfigError("listen.port", f"must be <= 65535, got {port}")
    models: tuple[ModelConfig, ...] = ()
    served = _str(data, "model", "", None)
    if "models" in data:
        if "pools" in data or "model" in data:
            raise ConfigError("models", "set either models or pools (and model), not both")
        models, pools = _models(data["models"])
        served = models[0].name
    else:
        raw_pools = data.get("pools")
        if not isinstance(raw_pools, list) or not raw_pools:
            raise ConfigError("pools", "must be a non-empty list of pools")
        pools = tuple(_pool(p, i) for i, p in enumerate(raw_pools))
    names = [p.name for p in pools]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError("pools", f"pool names must be unique; {n!r} repeats")
    est_raw = _mapping(data.get("estimator"), "estimator")
    estimator = EstimatorConfig.from_mapping(est_raw)

    bp = _mapping(data.get("backpressure"), "backpressure")
    _known(bp, "backpressure", ("max_wait", "retry_after"))
    rt = _mapping(data.get("retries"), "retries")
    _known(rt, "retries", ("same_pool", "larger_pools"))
    to = _mapping(data.get("timeouts"), "timeouts")
    _known(to, "timeouts", ("connect", "first_byte", "idle", "drain", "keepalive", "discovery"))
    he = _mapping(data.get("health"), "health")
    _known(
        he,
        "health",
        (
            "interval",
            "metrics_interval",
            "unhealthy_after",
            "timeout",
            "outlier_interval",
            "max_error_rate",
            "min_requests",
            "latency_factor",
            "latency_floor",
            "ejection_time",
        ),
    )
    li = _mapping(data.get("limits"), "limits")
    _known(
        li,
        "limits",
        ("max_body_bytes", "max_connections", "max_header_bytes", "max_idle_per_backend"),
    )
    au = _mapping(data.get("auth"), "auth")
    _known(au, "auth", ("api_keys", "admin_key", "metrics_key"))
    lg = _mapping(data.get("log"), "log")
    _known(lg, "log", ("level", "access"))
    ca = _mapping(data.get("calibrator"), "calibrator")
    _known(ca, "calibrator", ("snapshot", "save_interval", "shared"))

    keys_raw = au.get("api_keys", [])
    if not isinstance(keys_raw, list):
        raise ConfigError("auth.api_keys", "must be a list of keys (strings or {env: NAME})")
    api_keys = frozenset(_secret(k, f"auth.api_keys[{i}]") for i, k in enumerate(keys_raw))
    admin = au.get("admin_key")
    metrics_key = au.get("metrics_key")
    levels = {}
    for key in ("level", "access"):
        value = lg.get(key, "info")
        if not isinstance(value, str) or value.lower() not in _LOG_LEVELS:
            raise ConfigError(
                f"log.{key}", f"must be one of {', '.join(_LOG_LEVELS)}, got {value!r}"
            )
        levels[key] = value.lower()
    snap = ca.get("snapshot")
    if snap is not None and (not isinstance(snap, str) or not snap):
        raise ConfigError("calibrator.snapshot", f"must be a file path, got {snap!r}")
    ro = _mapping(data.get("routing"), "routing")
    _known(ro, "routing", ("adaptive",))
    adaptive = ro.get("adaptive", False)
    return GatewayConfig(
        adaptive=None if adaptive is False else AdaptiveConfig.from_mapping(adaptive),
        pools=pools,
        host=host,
        port=port,
        tls=_tls(listen.get("tls")),
        model=served,
        models=models,
        estimator=estimator,
        spillover=_bool(data, "spillover", "", True),
        backpressure=BackpressureConfig(
            max_wait=_num(bp, "max_wait", "backpressure", 2.0, positive=False),
            retry_after=_int(bp, "retry_after", "backpressure", 1),
        ),
        retries=RetryConfig(
            same_pool=_int(rt, "same_pool", "retries", 2),
            larger_pools=_int(rt, "larger_pools", "retries", 1),
        ),
        timeouts=TimeoutConfig(
            connect=_num(to, "connect", "timeouts", 3.0),
            first_byte=_num(to, "first_byte", "timeouts", 600.0),
            idle=_num(to, "idle", "timeouts", 300.0),
            drain=_num(to, "drain", "timeouts", 30.0, positive=False),
            keepalive=_num(to, "keepalive", "timeouts", 75.0),
            discovery=_num(to, "discovery", "timeouts", 60.0),
        ),
        health=HealthConfig(
            interval=_num(he, "interval", "health", 5.0),
            metrics_interval=_num(he, "metrics_interval", "health", 2.0, positive=False),
            unhealthy_after=_int(he, "unhealthy_after", "health", 3, lo=1),
            timeout=_num(he, "timeout", "health", 2.0),
            outlier_interval=_num(he, "outlier_interval", "health", 10.0, positive=False),
            max_error_rate=_num(he, "max_error_rate", "health", 0.5),
            min_requests=_int(he, "min_requests", "health", 20, lo=1),
            latency_factor=_num(he, "latency_factor", "health", 3.0),
            latency_floor=_num(he, "latency_floor", "health", 1.0, positive=False),
            ejection_time=_num(he, "ejection_time", "health", 30.0, positive=False),
        ),
        limits=LimitsConfig(
            max_body_bytes=_int(li, "max_body_bytes", "limits", 8 * 1024 * 1024, lo=1),
            max_connections=_int(li, "max_connections", "limits", 4096, lo=1),
            max_header_bytes=_int(li, "max_header_bytes", "limits", 64 * 1024, lo=1024),
            max_idle_per_backend=_int(li, "max_idle_per_backend", "limits", 128),
        ),
        auth=AuthConfig(
            api_keys=api_keys,
            admin_key=None if admin is None else _secret(admin, "auth.admin_key"),
            metrics_key=None if metrics_key is None else _secret(metrics_key, "auth.metrics_key"),
        ),
        log=LogConfig(level=levels["level"], access=levels["access"]),
        calibrator=CalibratorConfig(
            snapshot=Path(snap) if snap else None,
            save_interval=_num(ca, "save_interval", "calibrator", 60.0, positive=False),
            shared=_shared(ca.get("shared")),
        ),
    )


def _tls(value: Any) -> TlsConfig | None:
    """listen.tls: {cert: file, key: file}, both readable PEM files."""
    if value is None:
        return None
    data = _mapping(value, "listen.tls")
    _known(data, "listen.tls", ("cert", "key"))
    paths: dict[str, Path] = {}
    for key in ("cert", "key"):
        raw = data.get(key)
        if not isinstance(raw, str) or not raw:
            raise ConfigError(f"listen.tls.{key}", f"must be a PEM file path, got {raw!r}")
        path = Path(raw)
        if not path.is_file():
            raise ConfigError(f"listen.tls.{key}", f"no such file: {raw}")
        paths[key] = path
    return TlsConfig(paths["cert"], paths["key"])


def _models(value: Any) -> tuple[tuple[ModelConfig, ...], tuple[PoolConfig, ...]]:
    """models: {NAME: {aliases: [...], pools: [...]}, ...} -> models and every pool."""
    data = _mapping(value, "models")
    if not data:
        raise ConfigError("models", "must map at least one model name to its pools")
    models: list[ModelConfig] = []
    pools: list[PoolConfig] = []
    seen: dict[str, str] = {}
    for name, spec in data.items():
        where = f"models.{name}"
        spec = _mapping(spec, where)
        _known(spec, where, ("aliases", "pools"))
        aliases = spec.get("aliases") or []
        if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
            raise ConfigError(f"{where}.aliases", "must be a list of model names")
        for alias in (str(name), *aliases):
            if alias in seen:
                raise ConfigError(where, f"the name {alias!r} is also used by {seen[alias]}")
            seen[alias] = str(name)
        raw = spec.get("pools")
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"{where}.pools", "must be a non-empty list of pools")
        own = [_pool(p, i) for i, p in enumerate(raw)]
        pools += own
        models.append(ModelConfig(str(name), tuple(aliases), tuple(p.name for p in own)))
    return tuple(models), tuple(pools)


_SHARED_KEYS = (
    "url",
    "interval",
    "replica_id",
    "namespace",
    "grace",
    "half_life",
    "ttl",
    "timeout",
    "start_timeout",
)


def _shared(value: Any) -> SharedCalibrationConfig | None:
    """`shared: redis://host:port/db`, or a mapping with `url` and the knobs."""
    where = "calibrator.shared"
    if value is None:
        return None
    data: Mapping[str, Any] = {"url": value} if isinstance(value, str) else _mapping(value, where)
    _known(data, where, _SHARED_KEYS)
    url = data.get("url")
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in (
        "redis",
        "rediss",
        "unix",
    ):
        raise ConfigError(
            f"{where}.url" if not isinstance(value, str) else where,
            f"must be a Redis URL like redis://host:6379/0, got {url!r}",
        )
    d = SharedCalibrationConfig(url)
    return SharedCalibrationConfig(
        url=url,
        interval=_num(data, "interval", where, d.interval),
        replica_id=_str(data, "replica_id", where, None),
        namespace=_str(data, "namespace", where, d.namespace) or d.namespace,
        grace=_num(data, "grace", where, d.grace, positive=False),
        half_life=_num(data, "half_life", where, d.half_life),
        ttl=_num(data, "ttl", where, d.ttl),
        timeout=_num(data, "timeout", where, d.timeout),
        start_timeout=_num(data, "start_timeout", where, d.start_timeout, positive=False),
    )


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and validate a YAML config file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError("--config", f"{path}{where}: {problem}") from None
    return parse_config(data)
