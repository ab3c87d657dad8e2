"""Pools ordered by context length, and the routing decision.

    budget ─► smallest pool whose threshold holds it ─► saturated? ─► next larger
                 │                                                     pool that is
                 └─ over every pool's max_model_len ─► rejected        not (spilled)

A pool's threshold (B_short for the short pool) is at most its max_model_len;
the largest pool's threshold is its max_model_len. Spillover only ever moves a
request to a pool whose max_model_len holds its budget: larger pools do, by order.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from dualpool.contract import over_length_message
from dualpool.errors import ConfigError

__all__ = ["Decision", "PoolPolicy", "PoolSpec", "Reason"]


class Reason(enum.StrEnum):
    """Why a request went where it went (label values of metrics and logs)."""

    # The smallest pool whose threshold holds the budget.
    FITS = "fits"
    # Its pool was saturated; moved to a larger one that holds the budget.
    SPILLED = "spilled"
    # Its pool was saturated, and so was every larger one: it stays (backpressure decides).
    SATURATED = "saturated"
    # The conservative budget exceeds every pool, the optimistic one does not: the
    # largest pool gets it, and the backend's own check decides.
    UNCERTAIN_LARGEST = "uncertain_largest"
    # Even the optimistic budget exceeds the largest pool's max_model_len.
    REJECTED_TOO_LONG = "rejected_too_long"


@dataclass(frozen=True, slots=True)
class PoolSpec:
    name: str
    # The pool's vLLM --max-model-len.
    max_model_len: int
    # Largest budget routed here first; defaults to max_model_len.
    threshold: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("pools[].name", "must be a non-empty string")
        if type(self.max_model_len) is not int or self.max_model_len < 1:
            raise ConfigError(
                f"pools.{self.name}.max_model_len",
                f"must be a positive integer, got {self.max_model_len!r}",
            )
        if self.threshold is not None and (
            type(self.threshold) is not int or not 1 <= self.threshold <= self.max_model_len
        ):
            raise ConfigError(
                f"pools.{self.name}.threshold",
                f"must be an integer in [1, max_model_len={self.max_model_len}], "
                f"got {self.threshold!r}",
            )

    @property
    def effective_threshold(self) -> int:
        return self.max_model_len if self.threshold is None else self.threshold


@dataclass(slots=True, init=False)
class Decision:
    # Index of the chosen pool in the policy's order (smallest first); -1 when rejected.
    pool: int
    # Name of the chosen pool; "" when rejected.
    pool_name: str
    reason: Reason
    # The routing budget the decision was made on.
    budget: int
    # The pool the budget fits first, before any spillover; -1 when rejected.
    home: int
    # vLLM's over-length message, for REJECTED_TOO_LONG.
    message: str

    # An explicit __init__ (init=False): mypyc compiles it natively, where the one
    # dataclasses generates stays interpreted (~5x slower per instance).
    def __init__(
        self, pool: int, pool_name: str, reason: Reason, budget: int, home: int, message: str = ""
    ) -> None:
        self.pool = pool
        self.pool_name = pool_name
        self.reason = reason
        self.budget = budget
        self.home = home
        self.message = message

    @property
    def rejected(self) -> bool:
        return self.reason is Reason.REJECTED_TOO_LONG


class PoolPolicy:
    """Smallest pool that holds the budget; spill to larger ones when saturated."""

    __slots__ = ("_lens", "_names", "_thresholds", "pools", "spillover")

    def __init__(self, pools: Sequence[PoolSpec], *, spillover: bool = True) -> None:
        if not pools:
            raise ConfigError("pools", "at least one pool is required")
        names = [p.name for p in pools]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError("pools", f"pool names must be unique; {sorted(dup)[0]!r} repeats")
        ordered = sorted(pools, key=lambda p: (p.max_model_len, p.effective_threshold))
        # The largest pool takes everything up to its max_model_len.
        last = ordered[-1]
        if last.effective_threshold != last.max_model_len:
            ordered[-1] = PoolSpec(last.name, last.max_model_len, last.max_model_len)
        thresholds = [p.effective_threshold for p in ordered]
        for prev, cur in itertools.pairwise(ordered):
            if cur.effective_threshold < prev.effective_threshold:
                raise ConfigError(
                    f"pools.{cur.name}.threshold",
                    f"{cur.effective_threshold} is below the smaller pool "
                    f"{prev.name!r}'s threshold {prev.effective_threshold}; thresholds must "
                    "grow with max_model_len",
                )
        self.pools: tuple[PoolSpec, ...] = tuple(ordered)
        self.spillover = spillover
        self._thresholds = tuple(thresholds)
        self._lens = tuple(p.max_model_len for p in ordered)
        self._names = tuple(p.name for p in ordered)

    @property
    def max_model_len(self) -> int:
        return self._lens[-1]

    def index(self, name: str) -> int:
        try:
            return self._names.index(name)
        except ValueError:
            raise ConfigError("pool", f"unknown pool {name!r}; pools are {self._names}") from None

    def route(
        self,
        budget: int,
        *,
        min_budget: int | None = None,
        saturated: Sequence[bool] | None = None,
        prompt_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> Decision:
        """Choose a pool for a request of `budget` tokens.

        `min_budget` is the least the request could need (optimistic prompt +
        declared output); only when it exceeds the largest pool is the request
        rejected. `saturated[i]` says pool i is saturated (the caller's signal).
        `prompt_tokens`/`output_tokens` only fill in vLLM's rejection message.
        """
        lens = self._lens
        if budget > lens[-1]:
            least = budget if min_budget is None else min_budget
            if least > lens[-1]:
                p = prompt_tokens if prompt_tokens is not None else least
                o = output_tokens if output_tokens is not None else least - p
                return Decision(
                    -1,
                    "",
                    Reason.REJECTED_TOO_LONG,
                    budget,
                    -1,
                    over_length_message(lens[-1], o, p),
                )
            last = len(lens) - 1
            return Decision(last, self._names[last], Reason.UNCERTAIN_LARGEST, budget, last)
        home = 0
        thresholds = self._thresholds
        while budget > thresholds[home]:
            home += 1
        if saturated is None or not self.spillover or not saturated[home]:
            return Decision(home, self._names[home], Reason.FITS, budget, home)
        for i in range(home + 1, len(lens)):
            # NOTE: the safety check. Larger pools hold at least as much, but say it:
            # a spill must never reach a pool that would have to reject the request.
            if lens[i] >= budget and not saturated[i]:
                return Decision(i, self._names[i], Reason.SPILLED, budget, home)
        return Decision(home, self._names[home], Reason.SATURATED, budget, home)

    def threshold(self, index: int) -> int:
        return self._thresholds[index]

    @property
    def thresholds(self) -> tuple[int, ...]:
        """Every pool's threshold, smallest pool first (the last is its max_model_len)."""
        return self._thresholds

    def set_threshold(self, index: int, value: int) -> None:
        """Move pool `index`'s threshold (an adaptive controller's output).

        Held to the same rules as a configured one: within [1, max_model_len] of
        that pool, no smaller than the previous pool's and no larger than the
        next one's; the largest pool's stays its max_model_len.
        """
        last = len(self._lens) - 1
        if not 0 <= index < last:
            raise ConfigError("threshold", f"pool index {index} has no movable threshold")
        hi = min(self._lens[index], self._thresholds[index + 1])
        lo = self._thresholds[index - 1] if index > 0 else 1
        if type(value) is not int or not lo <= value <= hi:
            raise ConfigError(
                f"pools.{self._names[index]}.threshold", f"{value!r} outside [{lo}, {hi}]"
            )
        ts = list(self._thresholds)
        ts[index] = value
        self._thresholds = tuple(ts)
        old = self.pools[index]
        ps = list(self.pools)
        ps[index] = PoolSpec(old.name, old.max_model_len, value)
        self.pools = tuple(ps)

    def fallbacks(self, decision: Decision) -> tuple[int, ...]:
        """Larger pools a request may be retried on after its pool failed it."""
        if decision.pool < 0:
            return ()
        return tuple(range(decision.pool + 1, len(self._lens)))
