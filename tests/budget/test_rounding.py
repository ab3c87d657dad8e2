from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dualpool.budget.estimator import _round


@settings(max_examples=500)
@given(
    st.one_of(
        st.floats(min_value=-1e15, max_value=1e15, allow_nan=False),
        st.integers(min_value=-(10**6), max_value=10**6).map(lambda n: n / 4),  # exact halves
    )
)
def test_round_is_the_builtin_round(x: float) -> None:
    # The estimator's point estimate avoids the builtin's call; it must round the same way.
    assert _round(x) == round(x)
