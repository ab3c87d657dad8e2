"""The gateway's own endpoints, apart from proxying: health, ready, models, admin, metrics."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from dualpool.gateway._ops import readiness
from dualpool.gateway._telemetry import Outcome
from dualpool.http import Exchange, Request

if TYPE_CHECKING:
    from dualpool.gateway._gateway import Gateway

__all__ = ["admin", "health", "metrics", "models", "ready"]

_JSON = b"application/json"


def send_json(ex: Exchange, status: int, obj: Any) -> None:
    ex.send(status, json.dumps(obj).encode())


def health(gw: Gateway, req: Request, ex: Exchange) -> None:
    ex.send(200, b"", content_type=None)


def ready(gw: Gateway, req: Request, ex: Exchange) -> None:
    # Ready while any pool can serve; the degraded state is in the body (gateway/_ops.py).
    status, body = readiness(gw)
    send_json(ex, status, body)


def metrics(gw: Gateway, req: Request, ex: Exchange) -> None:
    key = gw.config.auth.metrics_key
    if key is not None:
        keys = frozenset((key,) if gw.admin_key is None else (key, gw.admin_key))
        if not gw.authorized(req, keys):
            gw.error(ex, 401, "/metrics needs the metrics key (Bearer)")
            return
    ex.send(200, gw.metrics.render(), content_type=b"text/plain; version=0.0.4; charset=utf-8")


def models(gw: Gateway, req: Request, ex: Exchange) -> None:
    if gw.api_keys and not gw.authorized(req, gw.api_keys):
        gw.metrics.requests.labels("none", Outcome.UNAUTHORIZED).inc()
        gw.error(ex, 401, "missing or invalid API key")
        return
    now = int(time.time())
    cards: list[dict[str, Any]] = [
        {
            "id": s.name,
            "object": "model",
            "created": now,
            "owned_by": "vllm",
            "root": s.name,
            "parent": None,
            "max_model_len": s.max_model_len,
            "permission": [],
        }
        for s in gw.models.served
    ]
    send_json(ex, 200, {"object": "list", "data": cards})


def admin(gw: Gateway, req: Request, ex: Exchange) -> None:
    if gw.admin_key is not None:
        if not gw.authorized(req, frozenset((gw.admin_key,))):
            gw.error(ex, 401, "the admin view needs the admin key (Bearer)")
            return
    elif gw.api_keys:
        gw.error(ex, 403, "the admin view is off: set auth.admin_key to enable it")
        return
    cal = gw.router.estimator.calibrator
    calib = {"categories": cal.categories(), "feedback": dict(cal.counters)}
    backends = {
        p.name: {
            "model": s.name,
            "max_model_len": p.max_model_len,
            "threshold": s.router.policy.pools[i].effective_threshold,
            "inflight": p.inflight,
            "max_concurrency": p.max_concurrency,
            "queued": p.num_waiting,
            "saturated": p.saturated,
            "backends": [b.state() for b in p.backends],
        }
        for s in gw.models.served
        for i, p in enumerate(s.pools)
    }
    models = {
        s.name: {"aliases": list(s.aliases), "pools": [p.name for p in s.pools]}
        for s in gw.models.served
    }
    path = req.path.rstrip(b"/")
    if path == b"/admin/calibrator":
        send_json(ex, 200, calib)
    elif path == b"/admin/backends":
        send_json(ex, 200, {"pools": backends})
    elif path == b"/admin":
        body = {"calibrator": calib, "pools": backends, "model": gw.model, "models": models}
        send_json(ex, 200, body)
    else:
        gw.error(ex, 404, "admin views: /admin, /admin/calibrator, /admin/backends")
