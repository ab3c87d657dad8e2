from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpool.errors import ConfigError
from dualpool.policy import PoolPolicy, PoolSpec, Reason

TWO = PoolPolicy([PoolSpec("long", 65536), PoolSpec("short", 8192)])


def test_pools_are_ordered_by_context_length() -> None:
    assert [p.name for p in TWO.pools] == ["short", "long"]
    assert TWO.route(8192).pool_name == "short"
    assert TWO.route(8193).pool_name == "long"
    assert TWO.route(8193).reason is Reason.FITS


def test_threshold_below_max_model_len() -> None:
    p = PoolPolicy([PoolSpec("short", 8192, threshold=6000), PoolSpec("long", 65536)])
    assert p.route(6000).pool_name == "short"
    assert p.route(6001).pool_name == "long"


def test_over_length_is_rejected_with_vllms_message() -> None:
    d = TWO.route(70000, min_budget=66000, prompt_tokens=65000, output_tokens=1000)
    assert d.rejected and d.pool == -1
    assert d.message.startswith("This model's maximum context length is 65536 tokens.")
    assert "requested 1000 output tokens" in d.message
    # vLLM tokenizes with truncation at L - M + 1 tokens and reports "at least" that.
    assert "at least 64537 input tokens" in d.message


def test_uncertain_budget_goes_to_the_largest_pool_not_rejected() -> None:
    d = TWO.route(70000, min_budget=60000)
    assert d.reason is Reason.UNCERTAIN_LARGEST and d.pool_name == "long"


def test_spillover_when_saturated_and_never_down() -> None:
    assert TWO.route(100, saturated=[True, False]).reason is Reason.SPILLED
    assert TWO.route(100, saturated=[True, True]).reason is Reason.SATURATED
    d = TWO.route(9000, saturated=[False, True])
    assert d.pool_name == "long" and d.reason is Reason.SATURATED
    no_spill = PoolPolicy(TWO.pools, spillover=False)
    assert no_spill.route(100, saturated=[True, False]).pool_name == "short"


@pytest.mark.parametrize(
    "pools",
    [
        [],
        [PoolSpec("a", 8192), PoolSpec("a", 65536)],
        [PoolSpec("a", 8192, 8000), PoolSpec("b", 16384, 4000), PoolSpec("c", 65536)],
    ],
)
def test_bad_pool_sets_are_config_errors(pools: list[PoolSpec]) -> None:
    with pytest.raises(ConfigError):
        PoolPolicy(pools)


def test_bad_pool_fields_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"pools\.s\.threshold"):
        PoolSpec("s", 8192, threshold=9000)
    with pytest.raises(ConfigError, match=r"pools\.s\.max_model_len"):
        PoolSpec("s", 0)


pool_sets = st.lists(st.integers(256, 200_000), min_size=1, max_size=4, unique=True).flatmap(
    lambda lens: st.tuples(
        st.just(sorted(lens)),
        st.lists(st.floats(0.1, 1.0), min_size=len(lens), max_size=len(lens)),
    )
)


@settings(max_examples=300, deadline=None)
@given(
    pool_sets,
    st.integers(1, 300_000),
    st.integers(0, 50_000),
    st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_no_decision_sends_a_budget_to_a_pool_that_cannot_hold_it(
    spec: tuple[list[int], list[float]], budget: int, slack: int, sat: list[bool]
) -> None:
    lens, fracs = spec
    # Thresholds grow with max_model_len: scale fractions of each length, then make monotone.
    thresholds: list[int] = []
    for n, frac in zip(lens, fracs, strict=True):
        t = max(1, int(n * frac))
        thresholds.append(max(t, thresholds[-1] if thresholds else 1))
    thresholds = [min(t, n) for t, n in zip(thresholds, lens, strict=True)]
    pools = [PoolSpec(f"p{i}", n, t) for i, (n, t) in enumerate(zip(lens, thresholds, strict=True))]
    policy = PoolPolicy(pools)
    min_budget = max(1, budget - slack)
    d = policy.route(budget, min_budget=min_budget, saturated=sat[: len(lens)])
    if d.rejected:
        assert min_budget > lens[-1]
        return
    chosen = policy.pools[d.pool]
    if d.reason is Reason.UNCERTAIN_LARGEST:
        assert d.pool == len(lens) - 1 and min_budget <= lens[-1]
    else:
        assert chosen.max_model_len >= budget
    if d.reason is Reason.SPILLED:
        assert d.pool > d.home and not sat[d.pool]
    if d.reason is Reason.FITS:
        # The smallest pool whose threshold holds the budget.
        assert all(p.effective_threshold < budget for p in policy.pools[: d.pool])
