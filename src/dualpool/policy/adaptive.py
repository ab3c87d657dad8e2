"""An online controller for the short pool's routing threshold (B_short).

The paper fixes B_short. Traffic is not stationary: the mix of prompt lengths
shifts over a day and the two pools' loads drift apart, so a fixed threshold
leaves one pool idle while the other queues. `ThresholdController` moves the
threshold from signals a gateway already has, and the simulator runs the same
object (docs/adaptive.md has the argument in full).

    signals (per pool, each optional, time-stamped)
        queue depth per instance  (vllm:num_requests_waiting)
        KV cache use              (vllm:kv_cache_usage_perc)
        batch occupancy           (vllm:num_requests_running / max_num_seqs)
        tail TPOT / TPOT target   (about the P99 of recent requests)
        SLO attainment            (share of recent requests within the SLO)
    ─► pressure per pool p = max(queue / queue_ref, kv / kv_ref, occupancy / occupancy_ref,
                                 tail TPOT / target, SLO deficit / slo_slack)
       where the SLO deficit is the drop below the attainment the pool shows
       when lightly loaded (a long pool misses a TTFT target on its longest
       prompts even when idle: that is not load, and moving B_short cannot fix it)
    ─► anchored at the planned threshold B0; w = each pool's share of recent requests
         at B0:  p_short >= 1, p_long < headroom, w_s p_s > w_l p_l   move down (relief)
                 p_long >= 1, p_short < headroom, w_l p_l > w_s p_s   move up   (relief)
         below:  p_long >= 1 or p_short < 1 - band                    step back up to B0
         above:  p_short >= 1 or p_long < 1 - band                    step back down to B0
         otherwise                                                    hold
    ─► a move shifts at most `step_share` of recent traffic and `step_work` of
       the receiving pool's recent work (read from the recent budget
       distribution), at most one move per `interval_s`, a reversal needs
       `reverse_after` votes in a row, and the threshold stays within
       [min_threshold, the short pool's max_model_len].

Objective: the fewest requests missing the SLO across the fleet (the hour's
P99 is over all requests), and never worse than the planned threshold: it
leaves B0 only to relieve a pool at its limit whose requests weigh more in the
fleet's misses than the other's, into a pool with headroom, and returns to B0
once the relief is no longer needed or starts to hurt. With no usable signal it
returns to B0 too: missing or stale signals (older than `stale_s`) hold the
threshold; after `revert_s` without fresh signals it steps back toward B0, one
bounded step per interval.

Pure: no I/O, no clock (the caller passes `now`), no threads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dualpool.errors import ConfigError

__all__ = ["AdaptiveConfig", "PoolSignal", "ThresholdController"]


@dataclass(frozen=True, slots=True)
class AdaptiveConfig:
    # Rate limit: at most one move per this many seconds.
    interval_s: float = 15.0
    # Bounded step: one move shifts at most this share of recent traffic...
    step_share: float = 0.02
    # ...and at most this share of the receiving pool's recent work (budget sum)...
    step_work: float = 0.1
    # ...and changes the threshold by at most this factor.
    max_step_ratio: float = 1.25
    # Hysteresis: relief starts when a pool's pressure reaches 1 and ends (the
    # threshold steps back to the planned one) when it is below 1 - band...
    band: float = 0.25
    # ...and only a pool whose pressure is below this receives the relieved load.
    headroom: float = 0.7
    # ...and a move against the previous one needs this many votes in a row.
    reverse_after: int = 3
    # Smoothing of the pressures: an exponential average with this weight per update.
    smoothing: float = 0.3
    # Lowest threshold the controller may set, as a fraction of the short pool's
    # max_model_len (it never sets one above max_model_len).
    min_fraction: float = 0.25
    # Pressure 1.0 at this many waiting requests per instance...
    queue_ref: float = 4.0
    # ...at this KV cache use...
    kv_ref: float = 0.9
    # ...at this share of the pool's batch slots running...
    occupancy_ref: float = 0.9
    # ...and when SLO attainment falls this far below its lightly-loaded level.
    slo_slack: float = 0.02
    # A signal older than this is ignored (the pool's pressure is unknown).
    stale_s: float = 30.0
    # With no usable signal this long, step back toward the static threshold.
    revert_s: float = 120.0
    # Recent routing budgets kept for the distribution (a ring).
    window: int = 4096

    def __post_init__(self) -> None:
        for name in (
            "interval_s",
            "band",
            "queue_ref",
            "kv_ref",
            "occupancy_ref",
            "slo_slack",
            "stale_s",
        ):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ConfigError(f"routing.adaptive.{name}", f"must be a number > 0, got {v!r}")
        if not 0.0 < self.step_work <= 1.0:
            raise ConfigError("routing.adaptive.step_work", "must be in (0, 1]")
        if not 0.0 < self.headroom <= 1.0:
            raise ConfigError("routing.adaptive.headroom", "must be in (0, 1]")
        if not self.band < 1.0:
            raise ConfigError("routing.adaptive.band", "must be < 1")
        if not 0.0 < self.step_share <= 0.5:
            raise ConfigError("routing.adaptive.step_share", "must be in (0, 0.5]")
        if type(self.reverse_after) is not int or self.reverse_after < 1:
            raise ConfigError("routing.adaptive.reverse_after", "must be an integer >= 1")
        if not 0.0 < self.smoothing <= 1.0:
            raise ConfigError("routing.adaptive.smoothing", "must be in (0, 1]")
        if not self.max_step_ratio > 1.0:
            raise ConfigError("routing.adaptive.max_step_ratio", "must be > 1")
        if not 0.0 < self.min_fraction <= 1.0:
            raise ConfigError("routing.adaptive.min_fraction", "must be in (0, 1]")
        if self.revert_s < self.stale_s:
            raise ConfigError("routing.adaptive.revert_s", "must be >= stale_s")
        if type(self.window) is not int or self.window < 16:
            raise ConfigError("routing.adaptive.window", "must be an integer >= 16")

    @classmethod
    def from_mapping(cls, data: Any) -> AdaptiveConfig:
        """From YAML (`routing: {adaptive: {...}}`); `true` means the defaults."""
        if data is True or data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError("routing.adaptive", "must be true or a mapping of settings")
        known = set(cls.__dataclass_fields__)
        for key in data:
            if key not in known:
                raise ConfigError(f"routing.adaptive.{key}", "unknown setting")
        return cls(**dict(data))


class PoolSignal:
    """What is known of one pool's load at time `at` (each part None when missing)."""

    __slots__ = ("at", "kv_use", "occupancy", "queue_per_instance", "slo_attainment", "tpot_ratio")

    def __init__(
        self,
        at: float,
        queue_per_instance: float | None = None,
        kv_use: float | None = None,
        slo_attainment: float | None = None,
        occupancy: float | None = None,
        tpot_ratio: float | None = None,
    ) -> None:
        self.at = at
        self.queue_per_instance = queue_per_instance
        self.kv_use = kv_use
        self.slo_attainment = slo_attainment
        # Running requests over the pool's batch slots (max_num_seqs x instances).
        self.occupancy = occupancy
        # The pool's recent tail TPOT (about its P99) over the TPOT target: a
        # leading sign of long prefills slowing every decode step, which the
        # queue, KV and occupancy do not show.
        self.tpot_ratio = tpot_ratio


class ThresholdController:
    """Moves B_short within [min, max_model_len]; see the module docstring."""

    __slots__ = (
        "_budgets",
        "_filled",
        "_i",
        "_last_dir",
        "_pl",
        "_ps",
        "_slo_base",
        "_votes",
        "base",
        "config",
        "hi",
        "last_fresh",
        "last_move",
        "lo",
        "moves",
        "next_update",
        "reason",
        "threshold",
    )

    def __init__(self, config: AdaptiveConfig, base: int, max_model_len: int) -> None:
        if not 1 <= base <= max_model_len:
            raise ConfigError(
                "routing.adaptive", f"threshold {base} outside [1, max_model_len={max_model_len}]"
            )
        self.config = config
        self.base = base
        self.hi = max_model_len
        self.lo = min(base, max(1, int(config.min_fraction * max_model_len)))
        self.threshold = base
        self._budgets = [0] * config.window
        self._i = 0
        self._filled = 0
        # Per side (short, long): SLO attainment when lightly loaded (None: not seen).
        self._slo_base: list[float | None] = [None, None]
        # Smoothed pressures (None: no fresh signal since the last gap).
        self._ps: float | None = None
        self._pl: float | None = None
        # Direction of the last move (+1 up, -1 down, 0 none) and votes against it.
        self._last_dir = 0
        self._votes = 0
        self.next_update = -math.inf
        self.last_move = -math.inf
        self.last_fresh = -math.inf
        self.moves = 0
        # Why the last update did what it did (for metrics and logs).
        self.reason = "init"

    def observe_budget(self, budget: int) -> None:
        """Record one request's routing budget (the recent distribution)."""
        i = self._i
        self._budgets[i] = budget
        i += 1
        self._i = 0 if i == len(self._budgets) else i
        if self._filled < len(self._budgets):
            self._filled += 1

    def pressure(self, s: PoolSignal | None, now: float, side: int = 0) -> float | None:
        """The pool's load relative to its limits (1.0: at a limit), or None if unknown.

        `side` 0 is the short pool, 1 the long one (each has its own SLO baseline).
        Pure: `update` is what learns the baselines.
        """
        p = self._load(s, now)
        if p is None or s is None:
            return p
        att = s.slo_attainment
        base = self._slo_base[side]
        if att is not None and math.isfinite(att) and base is not None:
            d = max(0.0, base - att) / self.config.slo_slack
            p = d if d > p else p
        return p

    def _load(self, s: PoolSignal | None, now: float) -> float | None:
        """Pressure from queue, KV and occupancy alone; None when stale or empty."""
        if s is None or now - s.at > self.config.stale_s:
            return None
        cfg = self.config
        p: float | None = None
        if s.queue_per_instance is not None and math.isfinite(s.queue_per_instance):
            p = max(0.0, s.queue_per_instance) / cfg.queue_ref
        if s.kv_use is not None and math.isfinite(s.kv_use):
            k = max(0.0, s.kv_use) / cfg.kv_ref
            p = k if p is None or k > p else p
        if s.occupancy is not None and math.isfinite(s.occupancy):
            o = max(0.0, s.occupancy) / cfg.occupancy_ref
            p = o if p is None or o > p else p
        if s.tpot_ratio is not None and math.isfinite(s.tpot_ratio):
            r = max(0.0, s.tpot_ratio)
            p = r if p is None or r > p else p
        if p is None and s.slo_attainment is not None and math.isfinite(s.slo_attainment):
            p = 0.0  # only the SLO is known: its deficit alone decides
        return p

    def _learn_slo_base(self, s: PoolSignal | None, now: float, side: int) -> None:
        load = self._load(s, now)
        if s is None or load is None:
            return
        att = s.slo_attainment
        if att is None or not math.isfinite(att):
            return
        base = self._slo_base[side]
        if base is None:
            self._slo_base[side] = att
        elif load < 0.3:  # lightly loaded: what the pool attains anyway
            self._slo_base[side] = 0.9 * base + 0.1 * att

    def shares(self) -> tuple[float, float]:
        """Shares of recent requests at or under the threshold, and over it."""
        n = self._filled
        if n < 64:
            return (0.5, 0.5)
        t = self.threshold
        k = 0
        for b in self._budgets[:n]:
            if b <= t:
                k += 1
        return (k / n, (n - k) / n)

    def update(self, now: float, short: PoolSignal | None, long: PoolSignal | None) -> int:
        """Decide at `now` (rate-limited: returns at once before `next_update`)."""
        if now < self.next_update:
            return self.threshold
        cfg = self.config
        self.next_update = now + cfg.interval_s
        self._learn_slo_base(short, now, 0)
        self._learn_slo_base(long, now, 1)
        ps = self.pressure(short, now, 0)
        pl = self.pressure(long, now, 1)
        if ps is None or pl is None:
            self._ps = self._pl = None  # a gap: start the averages afresh
            self._votes = 0
            if now - self.last_fresh >= cfg.revert_s and self.threshold != self.base:
                self._move(now, up=self.threshold < self.base, cap=self.base)
                self.reason = "revert"
            else:
                self.reason = "stale"
            return self.threshold
        self.last_fresh = now
        a = cfg.smoothing
        ps = ps if self._ps is None else a * ps + (1.0 - a) * self._ps
        pl = pl if self._pl is None else a * pl + (1.0 - a) * self._pl
        self._ps, self._pl = ps, pl
        want, reason = self._decide(ps, pl)
        if want == 0:
            self._votes = 0
            self.reason = "hold"
            return self.threshold
        if want == -self._last_dir:
            # Against the last move: only after reverse_after votes in a row.
            self._votes += 1
            if self._votes < cfg.reverse_after:
                self.reason = "hold"
                return self.threshold
        self._votes = 0
        # A return stops at the planned threshold; relief at the range's end.
        cap = self.base if reason == "return" else self.hi if want > 0 else self.lo
        self._move(now, up=want > 0, cap=cap)
        self._last_dir = want
        self.reason = reason
        return self.threshold

    def _decide(self, ps: float, pl: float) -> tuple[int, str]:
        """The direction to move (+1 up, -1 down, 0 hold) and why.

        Anchored at the planned threshold: leave it only to relieve a pool at
        its limit whose requests count for more of the fleet's SLO misses than
        the other's, into a pool with headroom; come back once the relieved
        pool is clear of its limit by `band`, or at once if the receiving pool
        reaches its own limit.
        """
        cfg = self.config
        t, base = self.threshold, self.base
        ws, wl = self.shares()
        # Relieving the short pool (t < base) or the long one (t > base).
        if t < base and (pl >= 1.0 or ps < 1.0 - cfg.band):
            return (1, "return")
        if t > base and (ps >= 1.0 or pl < 1.0 - cfg.band):
            return (-1, "return")
        if ps >= 1.0 and pl < cfg.headroom and ws * ps > wl * pl and t > self.lo and t <= base:
            return (-1, "down")
        if pl >= 1.0 and ps < cfg.headroom and wl * pl > ws * ps and t < self.hi and t >= base:
            return (1, "up")
        return (0, "hold")

    def _move(self, now: float, *, up: bool, cap: int) -> None:
        cfg = self.config
        t = self.threshold
        n = self._filled
        if n >= 64:
            # Shift at most step_share of recent traffic (the budget quantile next to
            # the threshold's own share in the recent distribution) and at most
            # step_work of the receiving pool's recent work (its budgets' sum).
            recent = sorted(self._budgets[:n])
            below = _count_le(recent, t)
            if up:
                j = min(n - 1, below + max(1, int(cfg.step_share * n)))
                budget = cfg.step_work * _sum_range(recent, 0, below)
                moved = 0
                k = below
                while k < j and moved + recent[k] <= budget:
                    moved += recent[k]
                    k += 1
                target = recent[max(below, k - 1)] if k > below else t + 1
            else:
                j = below - max(1, int(cfg.step_share * n))
                budget = cfg.step_work * _sum_range(recent, below, n)
                moved = 0
                k = below - 1
                while k > j and k >= 0 and moved + recent[k] <= budget:
                    moved += recent[k]
                    k -= 1
                # Everything above recent[k] moves: the new threshold is recent[k]
                # (or just under the smallest budget when all of them move).
                target = (recent[k] if k >= 0 else recent[0] - 1) if k < below - 1 else t - 1
        else:
            target = int(t * cfg.max_step_ratio) if up else int(t / cfg.max_step_ratio)
        # Bounded relative step, never past the cap (the range end or the base).
        if up:
            target = max(t + 1, min(target, int(t * cfg.max_step_ratio), cap))
            target = min(target, cap)
        else:
            target = min(t - 1, max(target, math.ceil(t / cfg.max_step_ratio), cap))
            target = max(target, cap)
        target = min(self.hi, max(self.lo, target))
        if target != t:
            self.threshold = target
            self.moves += 1
            self.last_move = now


def _sum_range(values: list[int], i: int, j: int) -> int:
    s = 0
    for k in range(i, j):
        s += values[k]
    return s


def _count_le(sorted_values: list[int], x: int) -> int:
    lo, hi = 0, len(sorted_values)
    while lo < hi:
        mid = (lo + hi) // 2
        if sorted_values[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo
