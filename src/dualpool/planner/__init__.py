"""Capacity planning: should a fleet split into a short and a long pool, and how big?

    _queueing.py   the paper's closed form, the discrete form, Erlang B/C, M/G/c waits
    _capacity.py   one instance on the workload's mix (engine model): mu, slots,
                   and the SLO-aware queueing size of a pool
    _verify.py     simulated runs, the bracket-and-bisect search over counts
    _windows.py    replications: windows of the input, whole pools, common random numbers
    _replicate.py  rounds of windows to a precision, the provisioned count, the SLO test
    _stats.py      Student-t intervals and one-sided tests
    _plan.py       the plan: homogeneous vs split, B_short sweep, three pools, costs
    _parallel.py   runners: local processes (default) or Ray
    _report.py     the rich text report and the HTML page with plots

See docs/planner.md for the model, the equations and how to read a plan.
"""

from dualpool.planner._capacity import (
    AnalyticSize,
    InstanceProfile,
    LoadPoint,
    PoolDesign,
    analytic_pool_size,
    load_point,
    profile_instance,
)
from dualpool.planner._plan import (
    DEFAULT_LONG,
    DEFAULT_SHORT,
    HOURS_PER_YEAR,
    Mix,
    PlanSettings,
    PoolJob,
    PoolOutcome,
    build_jobs,
    execute,
    mix_from_requests,
    plan,
    run_job,
    run_serial,
    unchecked_gpu,
)
from dualpool.planner._queueing import (
    DiscreteSizing,
    closed_form_saving,
    closed_form_saving_gpus,
    discrete_sizing,
    erlang_b,
    erlang_c,
    mgc_wait_quantile,
    pool_instances,
    recommend_split,
)
from dualpool.planner._replicate import PoolVerified
from dualpool.planner._stats import Interval, interval, one_sided_confidence
from dualpool.planner._verify import (
    PoolSim,
    SearchResult,
    VerifySettings,
    search_pool_size,
    simulate_pool,
)
from dualpool.planner._windows import WindowJob, WindowOutcome, WindowPlan, run_window

__all__ = [
    "DEFAULT_LONG",
    "DEFAULT_SHORT",
    "HOURS_PER_YEAR",
    "AnalyticSize",
    "DiscreteSizing",
    "InstanceProfile",
    "Interval",
    "LoadPoint",
    "Mix",
    "PlanSettings",
    "PoolDesign",
    "PoolJob",
    "PoolOutcome",
    "PoolSim",
    "PoolVerified",
    "SearchResult",
    "VerifySettings",
    "WindowJob",
    "WindowOutcome",
    "WindowPlan",
    "analytic_pool_size",
    "build_jobs",
    "closed_form_saving",
    "closed_form_saving_gpus",
    "discrete_sizing",
    "erlang_b",
    "erlang_c",
    "execute",
    "interval",
    "load_point",
    "mgc_wait_quantile",
    "mix_from_requests",
    "one_sided_confidence",
    "plan",
    "pool_instances",
    "profile_instance",
    "recommend_split",
    "run_job",
    "run_serial",
    "run_window",
    "search_pool_size",
    "simulate_pool",
    "unchecked_gpu",
]
