"""The per-request linear model of tokens on the text's shape, and the certain lower bound."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualpool.budget import BudgetEstimator, EstimatorConfig
from dualpool.budget.calibrator import _KNOB_FIELDS, LINEAR_K, _Knobs
from dualpool.budget.stats import LinearStats
from dualpool.errors import ConfigError
from dualpool.policy import PoolSpec, Reason
from dualpool.router import Router

WORDS = ["alpha", "beta", "gamma", "delta", "the", "of", "routing", "token"]


def text_of(rng: random.Random) -> str:
    """A text whose shape varies a lot: words, numbers, punctuation, newlines."""
    digits = rng.random() * 0.5
    out: list[str] = []
    for _ in range(rng.randint(40, 400)):
        r = rng.random()
        if r < digits:
            out.append(str(rng.randint(0, 10**6)))
        elif r < digits + 0.1:
            out.append(rng.choice([";", "{", "}", "==", "->"]))
        else:
            out.append(rng.choice(WORDS))
        out.append("\n" if rng.random() < 0.05 else " ")
    return "".join(out)


def true_tokens(text: str) -> int:
    # A tokenizer-like count: one per word, one per 3 digits, one per symbol run.
    n = 0
    for w in text.split():
        if w.isdigit():
            n += -(-len(w) // 3)
        else:
            n += 1
    return n + text.count("\n")


def body(text: str, **kw: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **kw}


def test_linear_model_beats_the_single_ratio_on_shaped_text() -> None:
    rng = random.Random(1)
    est = BudgetEstimator()
    ratio_only = BudgetEstimator(EstimatorConfig(linear=False))
    for _ in range(300):
        t = text_of(rng)
        for e in (est, ratio_only):
            e.observe(e.features(body(t)), true_tokens(t))
    coef = est.calibrator.coefficients("m", "prose")
    assert coef.theta is not None and len(coef.theta) == LINEAR_K
    assert ratio_only.calibrator.coefficients("m", "prose").theta is None
    lin_err: list[float] = []
    ratio_err: list[float] = []
    for _ in range(200):
        t = text_of(rng)
        truth = true_tokens(t)
        lin_err.append(
            abs(est.estimate(est.features(body(t)), precise=True).prompt_tokens_point - truth)
            / truth
        )
        r = ratio_only.estimate(ratio_only.features(body(t))).prompt_tokens_point
        ratio_err.append(abs(r - truth) / truth)
    lin_err.sort()
    ratio_err.sort()
    assert lin_err[100] < 0.03
    assert lin_err[100] < ratio_err[100] / 2
    # Conservative for routing: above the point estimate.
    e = est.estimate(est.features(body(text_of(rng))), precise=True)
    assert e.prompt_tokens_low <= e.prompt_tokens_point <= e.prompt_tokens


def test_shape_is_counted_only_near_a_threshold_unless_asked() -> None:
    rng = random.Random(5)
    router = Router([PoolSpec("short", 8192), PoolSpec("long", 65536)])
    for _ in range(200):
        t = text_of(rng)
        r = router.route(body(t))
        router.observe(r, {"prompt_tokens": true_tokens(t)})
    assert r.features.shaped  # feedback counts it
    small = router.route(body(text_of(rng)))
    assert not small.features.shaped  # ~1K tokens: nowhere near 8192
    big_text = ""
    while true_tokens(big_text) < 6000:
        big_text += text_of(rng) + " "
    n = true_tokens(big_text)
    near = router.route(body(big_text, max_tokens=max(1, 8192 - n)))
    assert near.features.shaped  # its budget is about B_short: the model decides
    assert router.route(body(text_of(rng)), precise=True).features.shaped


def test_requests_without_shape_never_use_the_linear_model() -> None:
    # The simulator's requests are known by bytes only: the ratio serves them,
    # bit for bit as before.
    rng = random.Random(2)
    est = BudgetEstimator()
    for _ in range(200):
        t = text_of(rng)
        est.observe(est.features(body(t)), true_tokens(t))
    f = est.features(body(text_of(rng)))
    from dualpool.budget import RequestFeatures

    bare = RequestFeatures("m", "prose", f.text_bytes, 0, 1, 0, 0, None)
    coef = est.calibrator.coefficients("m", "prose")
    a, m = est.calibrator.overhead("m")
    assert est.estimate(bare).prompt_tokens_point == max(
        1, round(a + m + f.text_bytes * coef.point)
    )


def test_snapshot_and_merge_carry_the_linear_model() -> None:
    rng = random.Random(3)
    a, b = BudgetEstimator(), BudgetEstimator()
    texts = [text_of(rng) for _ in range(200)]
    for i, t in enumerate(texts):
        e = a if i % 2 else b
        e.observe(e.features(body(t)), true_tokens(t))
    snap = json.loads(json.dumps(a.calibrator.snapshot()))
    restored = BudgetEstimator()
    restored.calibrator.restore(snap)
    probe = restored.features(body(text_of(rng)))
    assert restored.estimate(probe, precise=True) == a.estimate(probe, precise=True)
    merged = BudgetEstimator()
    merged.calibrator.merge(a.calibrator.snapshot())
    merged.calibrator.merge(b.calibrator.snapshot())
    assert merged.calibrator.coefficients("m", "prose").theta is not None
    truth = true_tokens(probe_text := text_of(rng))
    got = merged.estimate(merged.features(body(probe_text)), precise=True).prompt_tokens_point
    assert abs(got - truth) / truth < 0.1


@pytest.mark.parametrize(("version", "k"), [(1, 9), (2, 11), (3, 12)])
def test_an_older_snapshot_restores_all_but_its_linear_model(version: int, k: int) -> None:
    # Versions 1, 2 and 3 had 9, 11 and 12 linear coefficients: their ratios, outputs and
    # overhead still load; their linear statistics cannot, so the model relearns them.
    rng = random.Random(5)
    a = BudgetEstimator()
    for _ in range(100):
        t = text_of(rng)
        a.observe(a.features(body(t)), true_tokens(t))
    snap = json.loads(json.dumps(a.calibrator.snapshot()))
    assert snap["version"] == 4
    snap["version"] = version
    for per_model in snap["categories"].values():
        for data in per_model.values():
            old = LinearStats(k).to_dict()
            if version < 3:
                del old["standardized"]  # not written before version 3
            data["linear"] = old
    restored = BudgetEstimator()
    restored.calibrator.restore(snap)
    probe = restored.features(body(text_of(rng)))
    assert restored.calibrator.coefficients("m", "prose").theta is None
    assert restored.estimate(probe) == a.estimate(probe)  # the ratio's estimate
    snap["version"] = 5
    with pytest.raises(ConfigError, match="version"):
        BudgetEstimator().calibrator.restore(snap)


def test_poisoned_feedback_cannot_move_an_estimate_past_the_ratio_bounds() -> None:
    rng = random.Random(4)
    est = BudgetEstimator()
    for _ in range(200):
        t = text_of(rng)
        est.observe(est.features(body(t)), true_tokens(t))
    for _ in range(2000):  # adversarial usage: random plausible counts
        t = text_of(rng)
        f = est.features(body(t))
        est.observe(f, rng.randint(max(1, f.text_bytes // 15), f.text_bytes))
    f = est.features(body(text_of(rng)))
    coef = est.calibrator.coefficients("m", "prose")
    e = est.estimate(f, precise=True)
    a, m = est.calibrator.overhead("m")
    assert e.prompt_tokens_point <= a + m + 2.0 * f.text_bytes * coef.point + 1
    assert e.prompt_tokens_point >= a + m + 0.5 * f.text_bytes * coef.point - 1


# 3 x 14 rows of 13 floats is "large" to hypothesis; it is the size the test needs.
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.large_base_example])
@given(
    st.lists(
        st.lists(st.floats(0.0, 1.0), min_size=LINEAR_K - 1, max_size=LINEAR_K - 1),
        min_size=3 * LINEAR_K,
        max_size=60,
    )
)
def test_solve_recovers_a_noiseless_model(rows: list[list[float]]) -> None:
    theta = [0.25, 0.1, 0.3, 0.5, 0.8, 0.2, -0.1, 0.4, 0.15, 0.05, 0.6, 0.2, 0.35, 3.0]
    assert len(theta) == LINEAR_K
    st_ = LinearStats(LINEAR_K)
    for r in rows:
        z = [1.0, *r]
        st_.add(z, sum(t * v for t, v in zip(theta, z, strict=True)), 1.0)
    got = st_.solve(theta[0], 0.0)
    assert got is not None
    # Whatever the design's rank, the fitted model reproduces the data.
    for r in rows:
        z = [1.0, *r]
        want = sum(t * v for t, v in zip(theta, z, strict=True))
        assert sum(t * v for t, v in zip(got, z, strict=True)) == pytest.approx(want, abs=1e-3)


def test_merge_of_linear_statistics_is_addition() -> None:
    a, b, both = LinearStats(3), LinearStats(3), LinearStats(3)
    for i in range(10):
        z = [1.0, i / 10, (i % 3) / 3]
        (a if i < 5 else b).add(z, 0.3 + 0.1 * i, 0.99)
    a_dict = LinearStats.from_dict(json.loads(json.dumps(a.to_dict())))
    a_dict.merge(b)
    both.merge(a)
    both.merge(b)
    assert a_dict.zz == both.zz and a_dict.zy == both.zy and a_dict.n == 10


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-2.0, 5.0), min_size=50, max_size=300),
    st.floats(0.5, 0.95),
)
def test_margin_is_the_quantile_of_the_standardised_errors(zs: list[float], q: float) -> None:
    lin = LinearStats(2)
    for z in zs:
        lin.add_standardized(z, 1.0)
    got = lin.margin(q)
    assert 0.0 <= got <= 3.0
    # Within one bin (0.05) of the empirical quantile, clamped to the histogram's range.
    want = sorted(zs)[min(len(zs) - 1, max(0, int(q * len(zs)) - 1))]
    above = sorted(zs)[min(len(zs) - 1, int(q * len(zs)))]
    assert min(max(want, 0.0), 3.0) - 0.051 <= got <= min(max(above, 0.0), 3.0) + 0.051


def test_margin_statistics_merge_by_addition_and_round_trip() -> None:
    a, b, both = LinearStats(2), LinearStats(2), LinearStats(2)
    rng = random.Random(3)
    for i in range(200):
        (a if i % 2 else b).add_standardized(rng.gauss(0.0, 1.0), 0.995)
    a_back = LinearStats.from_dict(json.loads(json.dumps(a.to_dict())))
    assert a_back.zh == a.zh and a_back.zn == a.zn
    a_back.merge(b)
    both.merge(a)
    both.merge(b)
    assert a_back.zh == both.zh and a_back.zn == 200
    assert 0.6 < both.margin(0.78) < 1.0  # the normal's 0.78 quantile is 0.77


def test_the_margin_is_learned_per_category_and_falls_back_to_gamma() -> None:
    rng = random.Random(6)
    cfg = EstimatorConfig(linear_gamma=0.7)
    est = BudgetEstimator(cfg)
    for _ in range(40):  # too few standardised errors: the margin is linear_gamma
        t = text_of(rng)
        est.observe(est.features(body(t)), true_tokens(t))
    assert est.calibrator.coefficients("m", "prose").lin_gamma == 0.7
    for _ in range(400):
        t = text_of(rng)
        est.observe(est.features(body(t)), true_tokens(t))
    coef = est.calibrator.coefficients("m", "prose")
    assert coef.theta is not None and 0.0 <= coef.lin_gamma <= 3.0
    assert coef.lin_gamma != 0.7
    # Switched off: gamma x sd, as before.
    fixed = BudgetEstimator(EstimatorConfig(linear_gamma=0.7, linear_quantile=None))
    for _ in range(440):
        t = text_of(rng)
        fixed.observe(fixed.features(body(t)), true_tokens(t))
    assert fixed.calibrator.coefficients("m", "prose").lin_gamma == 0.7
    with pytest.raises(ConfigError, match="linear_quantile"):
        EstimatorConfig(linear_quantile=1.0)


def test_knobs_are_the_configs_own_fields() -> None:
    cfg = EstimatorConfig(beta=0.97, linear_gamma=0.5, class_priors={"zh": 3.0})
    k = _Knobs(cfg)
    # The declared attributes, read from the source (a compiled class keeps no
    # __annotations__): the copied list and the declarations must agree.
    import ast
    import pathlib

    import dualpool.budget.calibrator as mod

    src = pathlib.Path(mod.__file__).with_name("calibrator.py").read_text()
    cls = next(
        n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ClassDef) and n.name == "_Knobs"
    )
    declared = {
        n.target.id
        for n in cls.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }
    assert set(_KNOB_FIELDS) == declared
    for name in _KNOB_FIELDS:
        assert getattr(k, name) == getattr(cfg, name), name
    assert k.prior_for("zh") == 3.0 and k.prior_for("prose") == cfg.prior_bytes_per_token


# ---- the certain lower bound (issue 16, defect 6) ----------------------------------


def test_fresh_gateway_does_not_refuse_what_vllm_serves() -> None:
    router = Router([PoolSpec("only", 8192)])
    r = router.route(body("hello " * 6000))
    assert r.decision.reason is Reason.UNCERTAIN_LARGEST  # vLLM decides
    # A declared max_tokens counts: even the least prompt cannot fit with it.
    r = router.route(body("hello " * 6000, max_tokens=8192))
    assert r.decision.reason is Reason.REJECTED_TOO_LONG
    # Only a prompt that cannot fit whatever the tokenizer is refused without asking.
    r = router.route(body("x" * (128 * 8192 + 128)))
    assert r.decision.reason is Reason.REJECTED_TOO_LONG


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=3000))
def test_lower_bound_is_below_any_real_tokenizers_count(text: str) -> None:
    tok = pytest.importorskip("dualpool.tokenizers").load_tokenizer
    try:
        llama = tok("llama3")
    except Exception as exc:  # pragma: no cover - install-dependent
        pytest.skip(f"llama3 tokenizer unavailable: {exc}")
    est = BudgetEstimator()
    e = est.estimate(est.features(body(text)))
    clean = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    assert e.prompt_tokens_low <= max(1, llama.count(clean))


def _predict(theta: list[float], z: list[float]) -> float:
    return sum(t * v for t, v in zip(theta, z, strict=True))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
        min_size=8,
        max_size=40,
    ),
    st.integers(1, 3),
    st.floats(-0.5, 2.0),
    st.floats(1e-4, 0.1),
)
def test_the_ridge_does_not_depend_on_a_features_mean_level(
    rows: list[list[float]], j: int, shift: float, ridge: float
) -> None:
    """Shifting one feature's density by a constant in every text changes no prediction.

    The ridge is in units of each feature's variance and theta_0 is free, so a
    constant shift is absorbed by theta_0: what a feature's *mean* density is
    does not decide how hard its coefficient is shrunk.
    """
    theta = [0.2, 0.3, -0.1, 0.5]
    a, b = LinearStats(4), LinearStats(4)
    for i, r in enumerate(rows):
        z = [1.0, *r]
        y = _predict(theta, z) + (0.01 if i % 2 else -0.01)
        a.add(z, y, 0.99)
        zs = list(z)
        zs[j] += shift
        b.add(zs, y, 0.99)
    ta, tb = a.solve(0.25, ridge), b.solve(0.25, ridge)
    assert ta is not None and tb is not None
    for r in rows:
        z = [1.0, *r]
        zs = list(z)
        zs[j] += shift
        assert _predict(tb, zs) == pytest.approx(_predict(ta, z), abs=1e-6)


def test_the_ridge_does_not_bias_long_texts() -> None:
    """Densities that vary little about a large mean (long texts) are still fitted.

    The ridge of the raw second moment (before) pulled such a feature's
    coefficient toward 0 and theta_0 toward the whole ratio: a bias of
    several percent on every prediction.
    """
    rng = random.Random(3)
    theta = [0.05, 0.9, 0.3, 0.02]  # most tokens from the features, not the bytes
    lin = LinearStats(4)
    rows = []
    for _ in range(400):
        z = [1.0, 0.75 + rng.gauss(0, 0.01), 0.05 + rng.gauss(0, 0.005), rng.random() * 1e-3]
        rows.append(z)
        lin.add(z, _predict(theta, z) * (1 + rng.gauss(0, 0.002)), 0.995)
    ratio = sum(_predict(theta, z) for z in rows) / len(rows)
    got = lin.solve(ratio, 0.001)
    assert got is not None
    worst = max(abs(_predict(got, z) / _predict(theta, z) - 1) for z in rows)
    assert worst < 0.002
