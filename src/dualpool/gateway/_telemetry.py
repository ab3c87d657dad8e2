"""The gateway's Prometheus metrics (all named `dualpool_*`) and its access log.

Children used on every request are looked up once per label set and cached by
the registry; values computed from state (in-flight, health, learned ratios)
are refreshed by a collector when /metrics is scraped, never on the request path.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from dualpool.gateway._metrics import Counter, Gauge, Histogram, Registry

__all__ = ["ACCESS_LOG", "GatewayMetrics", "Outcome", "access_line"]

ACCESS_LOG = logging.getLogger("dualpool.access")

_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
_REL_ERR_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)


class Outcome:
    """Label values of dualpool_requests_total{outcome}."""

    OK = "ok"  # 2xx from a backend
    CLIENT_ERROR = "client_error"  # a backend's 4xx, forwarded
    UPSTREAM_ERROR = "upstream_error"  # 5xx, connection errors after every retry
    TIMEOUT = "timeout"  # no answer in time after every retry
    STREAM_ERROR = "stream_error"  # a stream that failed after its first byte
    CLIENT_CLOSED = "client_closed"  # the client went away first
    REJECTED = "rejected"  # over every pool's max_model_len (vLLM's 400)
    OVERLOADED = "overloaded"  # 429: every pool that could serve it is full
    UNAVAILABLE = "unavailable"  # 503: no healthy backend
    BAD_REQUEST = "bad_request"  # malformed body (400), too large (413)
    UNAUTHORIZED = "unauthorized"  # missing or wrong API key


class GatewayMetrics:
    def __init__(self) -> None:
        r = self.registry = Registry()
        self.requests = r.add(
            Counter("dualpool_requests", "Requests by pool and outcome.", ("pool", "outcome"))
        )
        self.routing = r.add(
            Counter("dualpool_routing_decisions", "Routing decisions by reason.", ("reason",))
        )
        self.spillovers = r.add(
            Counter(
                "dualpool_spillovers",
                "Requests moved to a larger pool because theirs was saturated.",
                ("from_pool", "to_pool"),
            )
        )
        self.misroutes = r.add(
            Counter(
                "dualpool_misroutes",
                "Over-length 400s from a pool (the estimate was too low); retried larger.",
                ("pool",),
            )
        )
        self.retries = r.add(
            Counter("dualpool_retries", "Upstream retries by pool and cause.", ("pool", "cause"))
        )
        self.rejections = r.add(
            Counter(
                "dualpool_rejections",
                "Requests the gateway answered itself with an error, by reason.",
                ("reason",),
            )
        )
        self.estimate_error = r.add(
            Histogram(
                "dualpool_estimate_relative_error",
                "|estimated prompt tokens (point) - usage.prompt_tokens| / usage.prompt_tokens.",
                buckets=_REL_ERR_BUCKETS,
            )
        )
        self.learned_ratio = r.add(
            Gauge(
                "dualpool_learned_bytes_per_token",
                "Learned bytes per token (point estimate) per category.",
                ("category",),
            )
        )
        self.learned_samples = r.add(
            Gauge(
                "dualpool_calibrator_samples",
                "Observations (decayed weight) behind each category's ratio.",
                ("category",),
            )
        )
        self.feedback = r.add(
            Counter(
                "dualpool_calibrator_feedback",
                "Usage feedback given to the calibrator, by accept/reject reason.",
                ("reason",),
            )
        )
        self.ttft = r.add(
            Histogram(
                "dualpool_upstream_ttft_seconds",
                "From sending upstream to the first byte of the answer's body.",
                ("pool",),
                _LATENCY_BUCKETS,
            )
        )
        self.latency = r.add(
            Histogram(
                "dualpool_upstream_latency_seconds",
                "From sending upstream to the end of the answer.",
                ("pool",),
                _LATENCY_BUCKETS,
            )
        )
        self.inflight = r.add(
            Gauge(
                "dualpool_backend_inflight",
                "Requests in flight through this gateway per backend.",
                ("pool", "backend"),
            )
        )
        self.healthy = r.add(
            Gauge("dualpool_backend_healthy", "1 when a backend is in.", ("pool", "backend"))
        )
        self.backend_waiting = r.add(
            Gauge(
                "dualpool_backend_waiting",
                "Scraped vllm:num_requests_waiting per backend.",
                ("pool", "backend"),
            )
        )
        self.backend_kv = r.add(
            Gauge(
                "dualpool_backend_kv_cache_usage",
                "Scraped vllm:kv_cache_usage_perc (0..1) per backend.",
                ("pool", "backend"),
            )
        )
        self.pool_inflight = r.add(
            Gauge("dualpool_pool_inflight", "Gateway-side slots in use per pool.", ("pool",))
        )
        self.pool_queued = r.add(
            Gauge("dualpool_pool_queued", "Requests waiting for a slot per pool.", ("pool",))
        )
        self.pool_saturated = r.add(
            Gauge("dualpool_pool_saturated", "1 when the pool counts as saturated.", ("pool",))
        )
        self.health_changes = r.add(
            Counter(
                "dualpool_backend_health_changes",
                "Backends taken out or put back in.",
                ("pool", "backend", "to"),
            )
        )
        self.breaker = r.add(
            Gauge(
                "dualpool_backend_breaker_state",
                "Circuit breaker per backend: 0 closed (in), 1 open (out), 2 half-open.",
                ("pool", "backend"),
            )
        )
        self.ejections = r.add(
            Counter(
                "dualpool_backend_ejections",
                "Backends ejected by outlier detection, by reason (error_rate, latency).",
                ("pool", "backend", "reason"),
            )
        )
        self.connections = r.add(Gauge("dualpool_client_connections", "Open client connections."))

    def add_collector(self, fn: Callable[[], None]) -> None:
        self.registry.collectors.append(fn)

    def render(self) -> bytes:
        return self.registry.render()


def access_line(fields: Sequence[tuple[str, Any]]) -> str:
    return json.dumps(dict(fields), separators=(",", ":"), default=str)


def configure_logging(level: str) -> None:
    """One JSON object per line on stderr for the gateway's own log and access log."""
    handler = logging.StreamHandler()
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger("dualpool")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.name == ACCESS_LOG.name:
            return record.getMessage()
        obj: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, separators=(",", ":"))
