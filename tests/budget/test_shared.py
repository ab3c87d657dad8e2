"""Shared calibration (budget/shared.py): own statistics recovered exactly, nothing counted twice."""

from __future__ import annotations

import json
import math
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dualpool.budget import Calibrator, EstimatorConfig, RequestFeatures
from dualpool.budget.shared import (
    SharedCalibrator,
    add_snapshots,
    age_weight,
    compatible,
    empty_snapshot,
    merge_snapshots,
    sample_counts,
)

CLASSES = ("prose", "code", "zh")
RATIOS = {"prose": 4.2, "code": 3.1, "zh": 1.6}


def feat(nbytes: int, cls: str, msgs: int = 1, max_out: int | None = None) -> RequestFeatures:
    return RequestFeatures(
        model="m",
        content_class=cls,
        text_bytes=nbytes,
        structured_bytes=0,
        num_messages=msgs,
        num_images=0,
        num_audio=0,
        max_output_tokens=max_out,
    )


def observe(cal: Calibrator, rng: random.Random, cls: str) -> bool:
    nbytes = rng.randint(200, 6000)
    tokens = round(nbytes / (RATIOS[cls] * rng.uniform(0.97, 1.03))) + 7
    return cal.observe(feat(nbytes, cls), tokens, rng.randint(10, 500)).accepted


def close(a: Any, b: Any, rel: float = 1e-7) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return all(close(a.get(k, 0.0), b.get(k, 0.0), rel) for k in keys)
    if isinstance(a, dict) or isinstance(b, dict):
        return False
    if isinstance(a, list) or isinstance(b, list):
        # The linear model's vectors of sums, element by element.
        if not (isinstance(a, list) and isinstance(b, list)) or len(a) != len(b):
            return False
        return all(close(x, y, rel) for x, y in zip(a, b, strict=True))
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-6)


def stats(snap: dict[str, Any]) -> dict[str, Any]:
    return {"categories": snap["categories"], "overhead": snap["overhead"]}


def test_alone_own_is_everything_learned() -> None:
    cal = Calibrator()
    shared = SharedCalibrator(cal)
    rng = random.Random(1)
    for _ in range(50):
        observe(cal, rng, "prose")
    assert close(stats(shared.own()), stats(add_snapshots(empty_snapshot(), cal.snapshot())))


def test_own_weight_after_install_is_exactly_the_local_decayed_sum() -> None:
    # The weight sum w gains exactly 1 per accepted observation and decays by beta:
    # own w = beta^k * w_own0 + sum_{i<k} beta^i, whatever the others hold.
    a, b = Calibrator(), Calibrator()
    sa = SharedCalibrator(a)
    rng = random.Random(2)
    for _ in range(30):
        observe(a, rng, "prose")
    for _ in range(80):
        observe(b, rng, "prose")
    own0 = sa.own()
    sa.install(own0, merge_snapshots([b.snapshot()]))
    w0 = own0["categories"]["m"]["prose"]["ratio"]["w"]
    k = sum(observe(a, rng, "prose") for _ in range(40))
    beta = a.config.beta
    own = sa.own()["categories"]["m"]["prose"]["ratio"]
    assert own["n"] == 30 + k
    assert math.isclose(own["w"], beta**k * w0 + sum(beta**i for i in range(k)), rel_tol=1e-9)


def test_install_routes_with_the_fleet_and_keeps_own_counters() -> None:
    a, b = Calibrator(), Calibrator()
    warmed = SharedCalibrator(b)
    rng = random.Random(3)
    for _ in range(60):
        observe(b, rng, "code")
    fresh = SharedCalibrator(a)
    before = dict(a.counters)
    fresh.install(fresh.own(), merge_snapshots([warmed.own()]))
    assert a.coefficients("m", "code") == b.coefficients("m", "code")
    assert a.output_budget("m", "code") == b.output_budget("m", "code")
    assert a.counters == before
    assert fresh.own()["categories"] == {}  # nothing of b's is ours to publish


def test_a_restored_snapshot_file_is_not_published_as_own() -> None:
    b = Calibrator()
    rng = random.Random(4)
    for _ in range(60):
        observe(b, rng, "prose")
    a = Calibrator()
    a.restore(json.loads(json.dumps(b.snapshot())))
    shared = SharedCalibrator(a)
    assert shared.own()["categories"] == {}
    observe(a, rng, "prose")
    assert sample_counts(shared.own())["categories/m/prose/ratio"] == 1


def test_age_weight() -> None:
    assert age_weight(0.0, 10.0, 60.0) == 1.0
    assert age_weight(10.0, 10.0, 60.0) == 1.0
    assert math.isclose(age_weight(70.0, 10.0, 60.0), 0.5)
    assert math.isclose(age_weight(130.0, 10.0, 60.0), 0.25)


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.integers(0, 2), st.sampled_from(("obs", "obs", "obs", "sync")), st.integers(0, 2)
        ),
        min_size=1,
        max_size=120,
    ),
    seed=st.integers(0, 2**16),
)
def test_three_replicas_never_lose_or_double_count(
    ops: list[tuple[int, str, int]], seed: int
) -> None:
    """Any interleaving of local observations and syncs: the own parts add up to every
    accepted observation once; syncing again without news changes nothing; after a
    round of syncs every replica routes with the same statistics."""
    rng = random.Random(seed)
    cals = [Calibrator(EstimatorConfig(outlier_sigmas=1e9)) for _ in range(3)]
    shared = [SharedCalibrator(c) for c in cals]
    published: list[dict[str, Any]] = [empty_snapshot() for _ in range(3)]
    accepted: dict[str, int] = {}

    def sync(i: int) -> None:
        published[i] = shared[i].own()
        shared[i].install(published[i], merge_snapshots(published[j] for j in range(3) if j != i))

    for i, op, c in ops:
        if op == "obs":
            cls = CLASSES[c]
            if observe(cals[i], rng, cls):
                accepted[cls] = accepted.get(cls, 0) + 1
        else:
            sync(i)
    owns = [s.own() for s in shared]
    for cls, n in accepted.items():
        total = sum(sample_counts(o).get(f"categories/m/{cls}/ratio", 0) for o in owns)
        assert total == n
    # Two rounds of syncs spread everything (each reads what the others published);
    # then every replica routes with the same fleet statistics, holding every
    # accepted observation once, and syncing again learns nothing new.
    for _ in range(2):
        for i in range(3):
            sync(i)
    snaps = [stats(c.snapshot()) for c in cals]
    for s in snaps[1:]:
        assert close(s, snaps[0], rel=1e-6)
    for cls in accepted:
        assert sample_counts(snaps[0]).get(f"categories/m/{cls}/ratio", 0) == accepted[cls]
    for i in range(3):
        sync(i)
    assert all(close(snaps[i], stats(cals[i].snapshot())) for i in range(3))


def test_another_versions_snapshot_is_left_out_of_the_merge() -> None:
    """A rolling upgrade: a replica of the previous snapshot version shares the key."""
    rng = random.Random(3)
    cal = Calibrator(EstimatorConfig())
    for _ in range(60):
        observe(cal, rng, "prose")
    ours = SharedCalibrator(cal).own()
    old = json.loads(json.dumps(ours))
    old["version"] = int(ours["version"]) - 1
    assert compatible(ours) and not compatible(old)
    merged = merge_snapshots([ours, old])
    assert sample_counts(merged) == sample_counts(ours)
    assert close(stats(merged), stats(merge_snapshots([ours])))
