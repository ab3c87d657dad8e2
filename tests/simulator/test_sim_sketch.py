from __future__ import annotations

import pickle

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpool.simulator import LogHistogram


def _lower(values: np.ndarray, q: float) -> float:
    s = np.sort(values)
    return float(s[int(np.floor(q * (len(s) - 1)))])


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(1e-4, 1e4, allow_nan=False), min_size=1, max_size=400),
    st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]),
)
def test_quantile_within_relative_accuracy(values: list[float], q: float) -> None:
    h = LogHistogram(0.01)
    for v in values:
        h.add(v)
    exact = _lower(np.array(values), q)
    assert abs(h.quantile(q) - exact) <= 0.01 * exact + 1e-12
    assert len(h) == len(values)


def test_merge_equals_one_sketch_and_memory_is_bounded() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.lognormal(0, 2, 50_000), rng.lognormal(1, 1, 30_000)
    ha, hb, hall = LogHistogram(), LogHistogram(), LogHistogram()
    ha.extend(a.tolist())
    hb.extend(b.tolist())
    hall.extend(np.concatenate([a, b]).tolist())
    ha.merge(hb)
    for q in (0.01, 0.5, 0.99, 0.999):
        assert ha.quantile(q) == hall.quantile(q)
    assert ha.count == 80_000
    assert ha.num_buckets < 2000  # a few decades at 1%: bounded whatever the count


def test_zeros_roundtrip_and_pickle() -> None:
    h = LogHistogram()
    h.extend([0.0, 0.0, 0.0, 1.0])
    assert h.quantile(0.5) == 0.0
    assert abs(h.quantile(1.0) - 1.0) < 0.01
    h2 = LogHistogram.from_dict(h.to_dict())
    h3 = pickle.loads(pickle.dumps(h))
    for x in (h2, h3):
        assert x.count == 4 and x.quantile(0.99) == h.quantile(0.99)
    assert np.isnan(LogHistogram().quantile(0.5))
