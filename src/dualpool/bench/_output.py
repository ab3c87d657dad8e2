"""What a run leaves behind: the table, `vllm bench serve`-shaped JSON, per-request files."""

from __future__ import annotations

import csv
import datetime as _dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from dualpool.bench._metrics import RequestResult, Summary
from dualpool.errors import ConfigError

__all__ = ["COLUMNS", "result_json", "summary_table", "write_requests"]

# Per-request columns of --out, in order.
COLUMNS = (
    "index",
    "arm",
    "category",
    "target_prompt_tokens",
    "target_output_tokens",
    "scheduled_s",
    "start_s",
    "queue_s",
    "status",
    "success",
    "error_kind",
    "error",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "itl_mean_s",
    "itl_max_s",
    "prompt_tokens",
    "completion_tokens",
    "chunks",
    "pool",
)


def _row(r: RequestResult) -> dict[str, Any]:
    itl = r.itl_s
    return {
        "index": r.index,
        "arm": r.arm,
        "category": r.category,
        "target_prompt_tokens": r.target_prompt_tokens,
        "target_output_tokens": r.target_output_tokens,
        "scheduled_s": r.scheduled_s,
        "start_s": r.start_s,
        "queue_s": r.queue_s,
        "status": r.status,
        "success": r.success,
        "error_kind": r.error_kind,
        "error": r.error,
        "ttft_s": r.ttft_s,
        "tpot_s": r.tpot_s,
        "e2e_s": r.e2e_s,
        "itl_mean_s": sum(itl) / len(itl) if itl else 0.0,
        "itl_max_s": max(itl) if itl else 0.0,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "chunks": r.chunks,
        "pool": r.pool,
    }


def write_requests(path: Path, results: Sequence[RequestResult]) -> None:
    """One row per request: CSV, or Parquet (with each request's ITLs) by the suffix."""
    suffix = path.suffix.lower()
    rows = [_row(r) for r in results]
    if suffix == ".csv":
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
        return
    if suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError(
                "--out", "Parquet needs pyarrow: pip install 'dualpool[parquet]', or write .csv"
            ) from None
        cols: dict[str, list[Any]] = {c: [row[c] for row in rows] for c in COLUMNS}
        cols["itl_s"] = [list(r.itl_s) for r in results]
        pq.write_table(pa.table(cols), path)
        return
    raise ConfigError("--out", f"expected a .csv or .parquet file, got {str(path)!r}")


def result_json(
    summary: Summary,
    results: Sequence[RequestResult],
    *,
    chat: bool,
    model: str,
    tokenizer: str,
    num_prompts: int,
    request_rate: float | None,
    max_concurrency: int | None,
    detailed: bool,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The fields `vllm bench serve --save-result` writes (with --save-detailed: the
    per-request lists), then ours (`errors_by_kind`, and `extra`)."""
    backend = "openai-chat" if chat else "openai"
    out: dict[str, Any] = {
        "date": _dt.datetime.now().strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": backend,
        "backend": backend,
        "label": "dualpool-bench",
        "model_id": model,
        "tokenizer_id": tokenizer,
        "num_prompts": num_prompts,
        "request_rate": "inf" if request_rate is None else request_rate,
        "burstiness": 1.0,
        "max_concurrency": max_concurrency,
    }
    out.update(summary.as_vllm())
    if detailed:
        out["input_lens"] = [r.prompt_tokens for r in results]
        out["output_lens"] = [r.output_tokens if r.success else 0 for r in results]
        out["ttfts"] = [r.ttft_s for r in results]
        out["itls"] = [r.itl_s for r in results]
        out["latencies"] = [r.e2e_s for r in results]
        out["start_times"] = [r.start_s for r in results]
        out["errors"] = [r.error for r in results]
    out["errors_by_kind"] = summary.errors_by_kind
    if extra:
        out.update(extra)
    return out


def summary_table(summaries: Mapping[str, Summary], title: str) -> Table:
    """One column per arm: counts, throughput, goodput, latency percentiles (ms)."""
    t = Table(title=title)
    t.add_column("metric")
    names = list(summaries)
    for name in names:
        t.add_column(name or "value", justify="right")
    first = summaries[names[0]]

    def row(label: str, fn: Any) -> None:
        t.add_row(label, *(fn(summaries[n]) for n in names))

    row("successful requests", lambda s: f"{s.completed:,}")
    row("failed requests", lambda s: f"{s.failed:,}")
    row("duration (s)", lambda s: f"{s.duration:.2f}")
    row("request throughput (req/s)", lambda s: f"{s.request_throughput:.2f}")
    if first.request_goodput is not None:
        row("request goodput (req/s)", lambda s: f"{s.request_goodput or 0.0:.2f}")
    row("output token throughput (tok/s)", lambda s: f"{s.output_throughput:,.1f}")
    row("total token throughput (tok/s)", lambda s: f"{s.total_token_throughput:,.1f}")
    row("peak concurrent requests", lambda s: f"{s.max_concurrent_requests:,}")
    for metric, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E")):
        row(f"mean {label} (ms)", lambda s, m=metric: f"{s.stats[m]['mean']:.2f}")
        for p, _ in first.stats[metric]["p"]:
            word = str(int(p)) if int(p) == p else str(p)
            row(f"P{word} {label} (ms)", lambda s, m=metric, w=word: f"{s.metric(m, 'p' + w):.2f}")
    kinds = sorted({k for s in summaries.values() for k in s.errors_by_kind})
    for k in kinds:
        row(f"errors: {k}", lambda s, k=k: str(s.errors_by_kind.get(k, 0)))
    return t
