from __future__ import annotations

import json
import random
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from dualpool.budget import BudgetEstimator, EstimatorConfig, FeedbackReason, RequestFeatures


def feat(nbytes: int, model: str = "m", cls: str = "prose", msgs: int = 1, **kw) -> RequestFeatures:  # type: ignore[no-untyped-def]
    return RequestFeatures(
        model=model,
        content_class=cls,
        text_bytes=nbytes,
        structured_bytes=kw.get("structured", 0),
        num_messages=msgs,
        num_images=0,
        num_audio=0,
        max_output_tokens=kw.get("max_out"),
    )


def stream(
    est: BudgetEstimator,
    ratio: float,
    n: int,
    rng: random.Random,
    noise: float = 0.05,
    model: str = "m",
    cls: str = "prose",
    a: float = 0.0,
    m: float = 0.0,
) -> None:
    for _ in range(n):
        nbytes = int(rng.lognormvariate(7.0, 1.0)) + 40
        msgs = rng.randint(1, 4)
        true = a + m * msgs + nbytes / (ratio * (1 + rng.uniform(-noise, noise)))
        est.observe(feat(nbytes, model, cls, msgs), max(1, round(true)))


def test_prior_is_four_bytes_per_token_until_min_samples() -> None:
    est = BudgetEstimator()
    e = est.estimate(feat(4000))
    assert e.prompt_tokens == 1000 and e.prompt_tokens_point == 1000
    assert e.output_tokens == 2048 and e.output_source == "default"


@settings(max_examples=25, deadline=None)
@given(st.floats(1.5, 6.0), st.integers(0, 2**32 - 1))
def test_converges_on_a_stationary_stream(ratio: float, seed: int) -> None:
    est = BudgetEstimator()
    stream(est, ratio, 200, random.Random(seed))
    e = est.estimate(feat(40_000))
    truth = 40_000 / ratio
    assert abs(e.prompt_tokens_point - truth) / truth < 0.03
    # Conservative for routing, optimistic for rejection.
    assert e.prompt_tokens_low <= e.prompt_tokens_point <= e.prompt_tokens


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.0, 0.3))
def test_survives_poisoned_feedback(seed: int, poison: float) -> None:
    rng = random.Random(seed)
    est = BudgetEstimator()
    stream(est, 4.0, 30, rng)
    for _ in range(300):
        nbytes = rng.randint(200, 20_000)
        if rng.random() < poison:
            bad = rng.choice([0, -5, 1, 10**9, nbytes * 3, nbytes // 40 + 1, "x", None, 2.5])
            est.observe(feat(nbytes), bad)
        else:
            est.observe(feat(nbytes), round(nbytes / (4.0 * rng.uniform(0.95, 1.05))))
    e = est.estimate(feat(40_000))
    assert abs(e.prompt_tokens_point - 10_000) / 10_000 < 0.05
    counters = est.calibrator.counters
    assert sum(counters[r] for r in FeedbackReason.REJECTED) > 0 or poison < 0.02


def test_rejections_are_counted_by_reason() -> None:
    est = BudgetEstimator()
    assert est.observe(feat(1000), 0).reason == FeedbackReason.NONPOSITIVE
    assert est.observe(feat(1000), None).reason == FeedbackReason.NONPOSITIVE
    assert est.observe(feat(1000), 10**6).reason == FeedbackReason.IMPLAUSIBLE
    assert est.observe(feat(100_000), 10).reason == FeedbackReason.IMPLAUSIBLE
    assert est.calibrator.counters[FeedbackReason.NONPOSITIVE] == 2
    assert est.calibrator.counters[FeedbackReason.IMPLAUSIBLE] == 2


def test_learns_template_overhead_so_short_prompts_are_not_underestimated() -> None:
    est = BudgetEstimator()
    stream(est, 4.0, 400, random.Random(1), noise=0.02, a=5, m=5)
    a, m = est.calibrator.overhead("m")
    assert 3 < a < 8 and 3.5 < m < 6.5
    e = est.estimate(feat(40, msgs=3))
    assert abs(e.prompt_tokens_point - (5 + 15 + 10)) <= 3


def test_snapshot_restore_round_trips_through_json() -> None:
    est = BudgetEstimator(EstimatorConfig(output_quantile=0.99, output_min_samples=10))
    rng = random.Random(3)
    stream(est, 3.3, 100, rng, cls="zh")
    stream(est, 4.4, 100, rng)
    for _ in range(50):
        est.observe(feat(500), 130, completion_tokens=rng.randint(10, 900))
    snap = json.loads(json.dumps(est.calibrator.snapshot()))
    other = BudgetEstimator(EstimatorConfig(output_quantile=0.99, output_min_samples=10))
    other.calibrator.restore(snap)
    for f in (feat(12_345), feat(999, cls="zh"), feat(10, msgs=4), feat(3000, model="new")):
        assert other.estimate(f) == est.estimate(f)
    assert other.calibrator.snapshot() == snap


def test_merge_of_two_replicas_equals_learning_both_streams() -> None:
    a, b, both = BudgetEstimator(), BudgetEstimator(), BudgetEstimator()
    stream(a, 4.0, 60, random.Random(1))
    stream(b, 4.0, 60, random.Random(2))
    merged = BudgetEstimator()
    merged.calibrator.merge(a.calibrator.snapshot())
    merged.calibrator.merge(b.calibrator.snapshot())
    stream(both, 4.0, 60, random.Random(1))
    cats = {c["category"]: c for c in merged.calibrator.categories()}
    assert cats["m/prose"]["samples"] == 120
    e = merged.estimate(feat(40_000)).prompt_tokens_point
    assert abs(e - 10_000) / 10_000 < 0.03


def test_categories_are_bounded_and_overflow_shares_a_default() -> None:
    est = BudgetEstimator(EstimatorConfig(max_categories=3))
    for i in range(10):
        est.observe(feat(4000, model=f"model-{i}"), 1000)
    models = {c["model"] for c in est.calibrator.categories()}
    assert len(models - {"*"}) == 3 and "*" in models


def test_learned_output_quantile_is_bounded_by_the_default() -> None:
    cfg = EstimatorConfig(output_quantile=0.99, output_min_samples=50, default_max_tokens=2048)
    est = BudgetEstimator(cfg)
    rng = random.Random(0)
    for _ in range(200):
        est.observe(feat(400), 100, completion_tokens=rng.randint(50, 300))
    e = est.estimate(feat(400))
    assert e.output_source == "learned" and 290 <= e.output_tokens <= 330
    for _ in range(400):
        est.observe(feat(400), 100, completion_tokens=rng.randint(3000, 9000))
    e = est.estimate(feat(400))
    assert e.output_source == "default" and e.output_tokens == 2048
    # A declared limit always wins.
    assert est.estimate(feat(400, max_out=77)).output_tokens == 77


def test_concurrent_updates_from_threads_lose_nothing() -> None:
    est = BudgetEstimator()

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(500):
            nb = rng.randint(100, 5000)
            est.observe(feat(nb), round(nb / 4))
            est.estimate(feat(nb))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert est.calibrator.categories()[0]["samples"] == 2000
