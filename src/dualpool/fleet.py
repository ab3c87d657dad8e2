"""Fleet rules the gateway and the simulator share: saturation, misroute retry, picker.

One definition each, so the simulator models what the gateway does:

- `over_limits(waiting, kv_usage, max_waiting, max_kv_usage)`: the saturation rule.
  An instance whose queue passes `max_waiting` or whose KV cache use passes
  `max_kv_usage` is saturated. The gateway applies it to each backend's scraped
  `vllm:num_requests_waiting` / `vllm:kv_cache_usage_perc` (a pool is saturated when
  every healthy backend is); the simulator to a pool's mean queue per instance and
  its KV use (it keeps those aggregates, not per-instance scans, per arrival).
- `misroute_target(fallbacks, already)`: vLLM refused a request as over-length
  (dualpool.contract) although the policy put it in a pool: it was routed too small;
  retry once on the next larger pool, never twice.
- `pick_least_loaded(loads, exclude, rng)`: the instance with the least outstanding
  work; up to `SCAN` instances are compared, a larger pool compares two random
  candidates (power of two choices) so a pick costs the same at any pool size.

Pure: imports nothing from the faces (gateway, simulator, emulator).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

__all__ = ["SCAN", "misroute_target", "over_limits", "pick_least_loaded"]

# Pools up to this size are scanned for the least loaded instance.
SCAN = 4


def over_limits(waiting: float, kv_usage: float, max_waiting: float, max_kv_usage: float) -> bool:
    """The saturation rule: the queue passes max_waiting, or KV use passes max_kv_usage."""
    return waiting > max_waiting or kv_usage > max_kv_usage


def misroute_target(fallbacks: Sequence[int], already: bool) -> int:
    """The pool to retry an over-length refusal on: the next larger one, once; -1: none."""
    if already or not fallbacks:
        return -1
    return fallbacks[0]


def pick_least_loaded(
    n: int,
    load: Callable[[int], float],
    exclude: Sequence[int] = (),
    rng: random.Random | None = None,
) -> int:
    """Index in [0, n) of the least loaded instance (ties: the lowest); -1 when none left.

    `load(i)`: instance i's outstanding work (the gateway: its own in-flight requests
    plus the backend's scraped queue; the simulator: requests queued or running).
    `exclude`: indices already tried for this request (then every instance is scanned).
    """
    if n <= 0:
        return -1
    if n <= SCAN or exclude:
        best = -1
        best_load = 0.0
        for i in range(n):
            if exclude and i in exclude:
                continue
            x = load(i)
            if best < 0 or x < best_load:
                best, best_load = i, x
        return best
    r = rng.randrange if rng is not None else random.randrange
    a = r(n)
    b = r(n)
    la = load(a)
    lb = load(b)
    if lb < la or (lb == la and b < a):
        return b
    return a
