"""Workloads: streams of simulated requests from traces, CDFs and generators.

Every source is a `Workload`: a re-iterable, deterministic iterator of
`Request`s in arrival order, streamed (never the whole trace in memory).

    Workload (ABC)
    ├── AzureTrace        Azure 2023/2024 CSV (TIMESTAMP,ContextTokens,GeneratedTokens)
    ├── LengthTrace       length-only CSV + synthetic arrivals
    ├── JsonlWorkload     OpenAI request bodies, with timestamps or synthetic arrivals
    ├── SyntheticWorkload block-seeded generator (presets via `preset()`)
    │   └── CdfWorkload   totals from a CDF JSON, split into prompt/output
    └── wrappers          ScaleRate, Window, Limit, DeclareMaxTokens, WithPromptBytes

`open_workload(spec, **options)` resolves CLI strings; `summary()` computes
the statistics the planner needs.
"""

from dualpool.workload._arrivals import ArrivalProcess
from dualpool.workload._azure import AzureTrace
from dualpool.workload._base import Workload
from dualpool.workload._dists import (
    Independent,
    LengthModel,
    LogNormalMixture,
    SplitTotal,
    TokenCdf,
    TokenDist,
)
from dualpool.workload._factory import open_workload
from dualpool.workload._jsonl import JsonlWorkload, fill_tokens, prompt_bytes
from dualpool.workload._lengths import CdfWorkload, LengthTrace
from dualpool.workload._request import UNKNOWN_TOKENS, Request, RequestColumns
from dualpool.workload._summary import DEFAULT_BUDGETS, TokenStats, WorkloadSummary, summary
from dualpool.workload._synthetic import PRESETS, SyntheticWorkload, TrafficClass, preset
from dualpool.workload._transforms import (
    DEFAULT_BYTES_PER_TOKEN,
    DeclareMaxTokens,
    Limit,
    ScaleRate,
    Window,
    WithPromptBytes,
    declare_max_tokens,
    limit,
    measure_rate,
    retime,
    scale_rate,
    shard,
    shard_bounds,
    window,
    with_prompt_bytes,
)

__all__ = [
    "DEFAULT_BUDGETS",
    "DEFAULT_BYTES_PER_TOKEN",
    "PRESETS",
    "UNKNOWN_TOKENS",
    "ArrivalProcess",
    "AzureTrace",
    "CdfWorkload",
    "DeclareMaxTokens",
    "Independent",
    "JsonlWorkload",
    "LengthModel",
    "LengthTrace",
    "Limit",
    "LogNormalMixture",
    "Request",
    "RequestColumns",
    "ScaleRate",
    "SplitTotal",
    "SyntheticWorkload",
    "TokenCdf",
    "TokenDist",
    "TokenStats",
    "TrafficClass",
    "Window",
    "WithPromptBytes",
    "Workload",
    "WorkloadSummary",
    "declare_max_tokens",
    "fill_tokens",
    "limit",
    "measure_rate",
    "open_workload",
    "preset",
    "prompt_bytes",
    "retime",
    "scale_rate",
    "shard",
    "shard_bounds",
    "summary",
    "window",
    "with_prompt_bytes",
]
