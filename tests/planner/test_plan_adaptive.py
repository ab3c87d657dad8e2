"""`plan --adaptive`'s windows: consecutive requests of the workload, retimed to the rate."""

from __future__ import annotations

import numpy as np

from dualpool.planner import mix_from_requests
from dualpool.planner._adaptive import fleet_windows
from dualpool.workload import Request


def test_windows_are_blocks_retimed_to_the_rate_and_wrap_around() -> None:
    reqs = [Request(0.5 * i + (0.3 if i % 2 else 0.0), 100 + i, 10 + i, None) for i in range(200)]
    mix = mix_from_requests(reqs)
    wins = fleet_windows(mix, rate=40.0, seconds=10.0, windows=3, seed=1)
    assert len(wins) == 3
    for w in wins:
        assert len(w) == 400  # longer than the workload: it wraps
        t = np.array([r.arrival_s for r in w])
        assert t[0] == 0.0 and np.all(np.diff(t) >= 0)
        assert abs((len(w) - 1) / t[-1] - 40.0) < 1e-6
        # Consecutive requests of the workload, in its order (mod its length).
        first = w[0].prompt_tokens - 100
        assert [r.prompt_tokens - 100 for r in w[:5]] == [(first + k) % 200 for k in range(5)]
