"""Calibration shared between replicas: this replica's own statistics apart from the others'.

Every replica routes with the fleet's statistics (its own plus the other
replicas'), but publishes only what it learned itself; publishing the merged view
would count every other replica's samples again on each round.

The calibrator's statistics are exponentially decayed sums (`budget/stats.py`):
each accepted observation multiplies a statistic's sums by `beta` and adds the
new term. After a rebuild installs `own + others` into the calibrator, k local
observations of one statistic turn it into

    beta^k * (own + others) + new  =  own' + beta^k * others

so this replica's own part is recovered exactly as `current - beta^k * others`,
with k the statistic's count `n` since the rebuild. No second calibrator, no hook
on the request path: the calibrator keeps learning as before.

Others are weighted by their age: a replica that stopped publishing (crashed,
scaled down, restarted under a new name) keeps full weight for `grace` seconds,
then fades with half-life `half_life`, so its samples are neither kept forever
nor counted twice beside those of its successor.

Pure: no I/O, no clock (the caller passes ages in seconds).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from dualpool.budget.calibrator import SNAPSHOT_VERSION, Calibrator

__all__ = [
    "SharedCalibrator",
    "add_snapshots",
    "age_weight",
    "compatible",
    "empty_snapshot",
    "merge_snapshots",
    "sample_counts",
    "scale_snapshot",
]

# Parts of a snapshot that are statistics (decayed sums, one `n` count each).
_STAT_PARTS = ("categories", "overhead")


def empty_snapshot() -> dict[str, Any]:
    return {"version": SNAPSHOT_VERSION, "categories": {}, "overhead": {}, "counters": {}}


def _is_stat(d: Mapping[str, Any]) -> bool:
    return "n" in d


def _stat_combine(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, fb: float) -> Any:
    """a + fb * b for one statistic (numbers and nested dicts of numbers); n adds exactly."""
    out: dict[str, Any] = {}
    keys = list(a or {})
    keys += [k for k in (b or {}) if a is None or k not in a]
    for key in keys:
        va = a.get(key) if a is not None else None
        vb = b.get(key) if b is not None else None
        if isinstance(va, dict) or isinstance(vb, dict):
            # A histogram's buckets: drop what cancelled out (rounding residue).
            sub = _stat_combine(va, vb, fb)
            out[key] = {k: v for k, v in sub.items() if not isinstance(v, float) or abs(v) > 1e-9}
        elif key == "n":
            out[key] = int(va or 0) + round(fb * int(vb or 0))
        elif key == "k":
            # The linear model's dimension: a shape, not a sum.
            out[key] = int(va if va is not None else (vb or 0))
        elif isinstance(va, list) or isinstance(vb, list):
            # The linear model's sufficient statistics (Z'WZ, Z'Wy, residual sums):
            # vectors of decayed sums, combined element by element.
            xa = [float(x) for x in (va or [])]
            xb = [float(x) for x in (vb or [])]
            size = max(len(xa), len(xb))
            xa += [0.0] * (size - len(xa))
            xb += [0.0] * (size - len(xb))
            out[key] = [x + fb * y for x, y in zip(xa, xb, strict=True)]
        else:
            out[key] = float(va or 0.0) + fb * float(vb or 0.0)
    return out


def _nonnegative(stat: dict[str, Any]) -> dict[str, Any]:
    """A statistic with no samples left is all zeros (not rounding residue).

    Kept rather than dropped: the calibrator reads a category's parts together.
    """
    if stat["n"] > 0:
        return stat
    return {k: _zero(k, v) for k, v in stat.items()}


def _zero(key: str, value: Any) -> Any:
    if isinstance(value, dict):
        return {}
    if isinstance(value, list):
        return [0.0] * len(value)
    if key == "k":
        return value
    return 0 if key == "n" else 0.0


def _walk_combine(
    a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, fb: float
) -> dict[str, Any]:
    """Combine two trees of statistics (model -> class -> part -> stat)."""
    out: dict[str, Any] = {}
    for key in [*(a or {}), *(k for k in (b or {}) if a is None or k not in a)]:
        va = a.get(key) if a is not None else None
        vb = b.get(key) if b is not None else None
        probe = va if isinstance(va, dict) else vb
        if not isinstance(probe, dict):
            continue
        if _is_stat(probe):
            out[key] = _nonnegative(_stat_combine(va, vb, fb))
        else:
            sub = _walk_combine(va, vb, fb)
            if sub:
                out[key] = sub
    return out


def add_snapshots(
    a: Mapping[str, Any], b: Mapping[str, Any], weight: float = 1.0
) -> dict[str, Any]:
    """a + weight * b (statistics only; counters are each replica's own)."""
    out = empty_snapshot()
    for part in _STAT_PARTS:
        out[part] = _walk_combine(a.get(part), b.get(part), weight)
    return out


def scale_snapshot(a: Mapping[str, Any], weight: float) -> dict[str, Any]:
    return add_snapshots(empty_snapshot(), a, weight)


def _counts(tree: Mapping[str, Any], prefix: str, out: dict[str, int]) -> None:
    for key, value in tree.items():
        if isinstance(value, dict):
            if _is_stat(value):
                out[f"{prefix}{key}"] = int(value["n"])
            else:
                _counts(value, f"{prefix}{key}/", out)


def sample_counts(snapshot: Mapping[str, Any]) -> dict[str, int]:
    """Every statistic's sample count, keyed `part/model/class/stat` (for checks and tests)."""
    out: dict[str, int] = {}
    for part in _STAT_PARTS:
        _counts(snapshot.get(part) or {}, f"{part}/", out)
    return out


def _own_part(
    current: Mapping[str, Any] | None,
    installed: Mapping[str, Any] | None,
    others: Mapping[str, Any] | None,
    beta: float,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, cur in (current or {}).items():
        if not isinstance(cur, dict):
            continue
        inst = installed.get(key) if installed is not None else None
        oth = others.get(key) if others is not None else None
        if _is_stat(cur):
            if not isinstance(oth, dict):
                out[key] = _stat_combine(cur, None, 0.0)
                continue
            k = int(cur["n"]) - int(inst["n"]) if isinstance(inst, dict) else 0
            stat = _stat_combine(cur, oth, -(beta ** max(0, k)))
            # n is not decayed: own n = current n - others' n.
            stat["n"] = int(cur["n"]) - int(oth["n"])
            out[key] = _nonnegative(stat)
        else:
            sub = _own_part(
                cur,
                inst if isinstance(inst, dict) else None,
                oth if isinstance(oth, dict) else None,
                beta,
            )
            if sub:
                out[key] = sub
    return out


def _live(tree: Mapping[str, Any]) -> bool:
    if _is_stat(tree):
        return int(tree["n"]) > 0
    return any(isinstance(v, dict) and _live(v) for v in tree.values())


def _prune(snap: dict[str, Any]) -> dict[str, Any]:
    """Leave out categories and models without a sample of ours (a category's parts go together)."""
    for part in _STAT_PARTS:
        tree = snap.get(part) or {}
        kept: dict[str, Any] = {}
        for model, sub in tree.items():
            if _is_stat(sub):
                if _live(sub):
                    kept[model] = sub
                continue
            cats = {cls: cat for cls, cat in sub.items() if _live(cat)}
            if cats:
                kept[model] = cats
        snap[part] = kept
    return snap


def compatible(snap: Mapping[str, Any]) -> bool:
    """Whether a published snapshot has this version's shape.

    During a rolling upgrade replicas of two versions share one Redis key; their
    statistics may differ in shape (the linear model's dimension grew from 9 to
    11 coefficients in snapshot version 2), and summing them element by element
    would be garbage. The other version's part is left out until its replicas are
    replaced: each version routes on the statistics of its own kind.
    """
    return snap.get("version") == SNAPSHOT_VERSION


def merge_snapshots(
    snaps: Iterable[Mapping[str, Any]], weights: Iterable[float] | None = None
) -> dict[str, Any]:
    """The weighted sum of several replicas' statistics (pure; may run in a thread).

    Snapshots of another version (`compatible`) are left out.
    """
    merged = empty_snapshot()
    for snap, w in zip(snaps, weights if weights is not None else _ones(), strict=False):
        if compatible(snap):
            merged = add_snapshots(merged, snap, w)
    return merged


def _ones() -> Iterable[float]:
    while True:
        yield 1.0


def age_weight(age: float, grace: float, half_life: float) -> float:
    """1 up to `grace` seconds old, then halving every `half_life` seconds."""
    if age <= grace:
        return 1.0
    return math.pow(0.5, (age - grace) / half_life)


class SharedCalibrator:
    """A calibrator's statistics split into this replica's own and the others' part.

    Call `own()` for what to publish, and `install(own, others)` with the other
    replicas' published snapshots merged (`merge_snapshots`, weighted; that part
    may run in a thread) to route with the sum. `own()` and `install()` run on the
    thread that feeds the calibrator (the gateway's event loop), one right after
    the other, so no observation falls between them.
    """

    def __init__(self, calibrator: Calibrator) -> None:
        self.calibrator = calibrator
        self.beta = calibrator.config.beta
        # What the calibrator already holds (a restored snapshot file) counts as
        # others' until the fleet's view replaces it: never published as ours.
        start = calibrator.snapshot()
        self._others: dict[str, Any] = add_snapshots(empty_snapshot(), start)
        self._installed: dict[str, Any] = self._others

    def own(self) -> dict[str, Any]:
        """This replica's own statistics: everything learned here and nothing merged."""
        current = self.calibrator.snapshot()
        out = empty_snapshot()
        for part in _STAT_PARTS:
            out[part] = _own_part(
                current.get(part), self._installed.get(part), self._others.get(part), self.beta
            )
        return _prune(out)

    def others(self) -> dict[str, Any]:
        return self._others

    def install(self, own: Mapping[str, Any], others: Mapping[str, Any]) -> None:
        """Route with own + others (`merge_snapshots` of the other replicas') from now on;
        the calibrator's counters stay ours."""
        merged = dict(others)
        total = add_snapshots(own, merged)
        cal = self.calibrator
        counters = dict(cal.counters)
        cal.restore(total)
        cal.counters = counters
        self._others = merged
        self._installed = total
