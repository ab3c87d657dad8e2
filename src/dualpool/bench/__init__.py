"""`dualpool bench`: replay a workload against OpenAI-compatible endpoints, vLLM's metrics.

_client.py    all the HTTP (one narrow interface over the gateway's upstream client)
_prompts.py   request bodies: prompts of the trace's token counts, or bodies as given
_run.py       the load generator: open/closed loop, one or two arms, bounded, stoppable
_metrics.py   per-request results and the summary, as `vllm bench serve` defines them
_output.py    the table, the --json document, per-request CSV/Parquet
_session.py   one benchmark from its settings
"""

from dualpool.bench._client import Endpoint
from dualpool.bench._metrics import METRICS, RequestResult, Summary, parse_goodput, summarize
from dualpool.bench._output import COLUMNS, result_json, summary_table, write_requests
from dualpool.bench._prompts import DEFAULT_MIX, BodyMaker, BodyOptions, PromptSynth, parse_mix
from dualpool.bench._run import ArmProgress, RunOptions, RunResult, run_bench
from dualpool.bench._session import BenchConfig, BenchOutcome, bench, discover_model, load_workload

__all__ = [
    "COLUMNS",
    "DEFAULT_MIX",
    "METRICS",
    "ArmProgress",
    "BenchConfig",
    "BenchOutcome",
    "BodyMaker",
    "BodyOptions",
    "Endpoint",
    "PromptSynth",
    "RequestResult",
    "RunOptions",
    "RunResult",
    "Summary",
    "bench",
    "discover_model",
    "load_workload",
    "parse_goodput",
    "parse_mix",
    "result_json",
    "run_bench",
    "summarize",
    "summary_table",
    "write_requests",
]
