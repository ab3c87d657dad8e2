"""`dualpool bench`: replay a workload against any OpenAI-compatible endpoint and time it.

Reads any workload the simulator reads (Azure traces, length CSVs, CDFs,
presets, a JSONL of request bodies), writes prompts of the trace's token
counts (or sends the bodies as given), and sends them:

  open loop    at the trace's own times divided by --speedup, or retimed to
               --rate (Poisson for presets); --max-concurrency caps requests in flight
  closed loop  --users N: each user sends its next request when the last ends

Per request it measures TTFT, ITL, TPOT and E2E exactly as `vllm bench serve`
defines them, with usage's prompt and completion tokens; then prints
throughput, goodput under --goodput SLOs and percentiles. --json prints the
fields of `vllm bench serve --save-result`; --out writes one row per request
(.csv or .parquet).

It sends `x-dualpool-output-tokens: N` so an emulated backend (`dualpool
emulate`) generates the trace's output length; for a real vLLM use
--no-output-hint: max_tokens = N and ignore_eos, as vLLM's benchmark does.

--compare A_URL B_URL replays the same workload through both endpoints at the
same time (each request sent to both at once) and prints them side by side.

Bounded: --num-requests, --duration (sending window), --max-time (hard limit),
--request-timeout. Ctrl-C stops at once and reports what was measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from dualpool.cli.common import print_json
from dualpool.errors import ConfigError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "bench",
        help="replay a workload against an OpenAI-compatible endpoint (vLLM's metrics)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "workload",
        nargs="?",
        default="azure-conv-like",
        help="workload spec: trace path, CDF JSON, JSONL of bodies, or preset "
        "(default azure-conv-like)",
    )
    p.add_argument(
        "--url", default="http://127.0.0.1:8000", help="base URL (default http://127.0.0.1:8000)"
    )
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("A_URL", "B_URL"),
        default=None,
        help="replay through two endpoints at once and compare them",
    )
    p.add_argument("--model", default=None, help="model name (default: first of /v1/models)")
    p.add_argument(
        "--endpoint",
        choices=("chat", "completions"),
        default="chat",
        help="API for synthesized prompts (JSONL bodies choose their own; default chat)",
    )
    p.add_argument("--num-requests", type=int, default=1000, help="requests (default 1000)")
    p.add_argument("--rate", type=float, default=None, help="retime arrivals to this req/s")
    p.add_argument(
        "--speedup", type=float, default=1.0, help="compress the trace's time by this factor"
    )
    p.add_argument("--users", type=int, default=None, help="closed loop with N users")
    p.add_argument("--max-concurrency", type=int, default=None, help="cap requests in flight")
    p.add_argument("--duration", type=float, default=None, help="stop sending after S seconds")
    p.add_argument("--max-time", type=float, default=None, help="hard limit on the run, seconds")
    p.add_argument(
        "--request-timeout", type=float, default=600.0, help="per request, seconds (default 600)"
    )
    p.add_argument("--no-stream", action="store_true", help="ask for whole answers, not SSE")
    p.add_argument(
        "--no-output-hint",
        action="store_true",
        help="no x-dualpool-output-tokens header: max_tokens + ignore_eos (real vLLM)",
    )
    p.add_argument(
        "--mix",
        default=None,
        help="content of prompts without a category, e.g. prose=0.6,code=0.25,zh=0.1,ja=0.05",
    )
    p.add_argument(
        "--tokenizer",
        default="llama3",
        choices=("llama3", "qwen", "bytes"),
        help="tokenizer the prompts are sized with (default llama3, the emulator's)",
    )
    p.add_argument("--seed", type=int, default=0, help="prompt text seed (default 0)")
    p.add_argument(
        "--goodput",
        nargs="+",
        default=None,
        metavar="KEY:MS",
        help="SLOs for goodput, as vLLM: ttft:MS tpot:MS e2el:MS",
    )
    p.add_argument(
        "--percentiles", default="50,90,99", help="percentiles to report (default 50,90,99)"
    )
    p.add_argument(
        "--header", action="append", default=[], metavar="K=V", help="extra request header"
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY"),
        help="bearer key for the endpoint (default: $OPENAI_API_KEY, as vLLM's benchmark)",
    )
    p.add_argument("--extra-body", default=None, help="JSON object merged into every body")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--detailed", action="store_true", help="with --json: the per-request lists too")
    p.add_argument("--out", default=None, metavar="FILE", help="per-request .csv or .parquet")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _floats(flag: str, text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(flag, f"expected comma-separated numbers, got {text!r}") from None


def config_from_args(args: argparse.Namespace) -> Any:
    from dualpool.bench import BenchConfig, RunOptions, parse_goodput, parse_mix

    targets = [("A", args.compare[0]), ("B", args.compare[1])] if args.compare else [("", args.url)]
    headers: list[tuple[str, str]] = []
    for h in args.header:
        k, eq, v = h.partition("=")
        if not eq or not k.strip():
            raise ConfigError("--header", f"expected KEY=VALUE, got {h!r}")
        headers.append((k.strip(), v.strip()))
    if args.api_key:
        headers.append(("authorization", f"Bearer {args.api_key}"))
    extra = None
    if args.extra_body is not None:
        try:
            extra = json.loads(args.extra_body)
        except ValueError as exc:
            raise ConfigError("--extra-body", f"not JSON: {exc}") from None
        if not isinstance(extra, dict):
            raise ConfigError("--extra-body", "must be a JSON object")
    options = RunOptions(
        mode="closed" if args.users is not None else "open",
        speedup=args.speedup,
        users=1 if args.users is None else args.users,
        max_concurrency=args.max_concurrency,
        duration_s=args.duration,
        max_time_s=args.max_time,
        request_timeout_s=args.request_timeout,
        stream=not args.no_stream,
    )
    return BenchConfig(
        targets=targets,
        workload=args.workload,
        num_requests=args.num_requests,
        rate=args.rate,
        options=options,
        model=args.model,
        chat=args.endpoint == "chat",
        output_hint=not args.no_output_hint,
        mix=parse_mix(args.mix) if args.mix else None,
        tokenizer=args.tokenizer,
        seed=args.seed,
        goodput=parse_goodput(args.goodput) if args.goodput else {},
        percentiles=_floats("--percentiles", args.percentiles),
        headers=headers,
        extra_body=extra,
    )


def live_progress(console: Console, total: int, enabled: bool) -> tuple[Any, Callable[..., None]]:
    """A rich progress display with one bar per arm, and the callback that feeds it."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not enabled,
    )
    tasks: dict[str, Any] = {}

    def update(arms: list[Any], elapsed: float) -> None:
        for a in arms:
            if a.name not in tasks:
                tasks[a.name] = bar.add_task(a.name or "requests", total=total, info="")
            rate = a.done / elapsed if elapsed > 0 else 0.0
            bar.update(
                tasks[a.name],
                completed=a.done,
                info=f"ok {a.ok} failed {a.failed} in flight {a.in_flight} {rate:.1f} req/s",
            )

    return bar, update


def run(args: argparse.Namespace) -> int:
    from dualpool.bench import bench, result_json, summary_table, write_requests

    cfg = config_from_args(args)
    out_path = Path(args.out) if args.out else None
    if out_path is not None and out_path.suffix.lower() not in (".csv", ".parquet"):
        raise ConfigError("--out", f"expected a .csv or .parquet file, got {args.out!r}")
    err = Console(stderr=True)
    bar, update = live_progress(err, cfg.num_requests, not args.no_progress and err.is_terminal)

    async def main() -> Any:
        loop = asyncio.get_running_loop()

        def on_start(stop: Callable[[str], None]) -> None:
            loop.add_signal_handler(signal.SIGINT, stop, "interrupted")
            where = " and ".join(url for _, url in cfg.targets)
            print(
                f"dualpool bench: sending {cfg.workload} to {where} (Ctrl-C stops)",
                file=sys.stderr,
                flush=True,
            )

        try:
            return await bench(cfg, progress=update, on_start=on_start)
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    with bar:
        outcome = _run_loop(main)
    names = list(outcome.summaries)
    if out_path is not None:
        write_requests(out_path, [r for n in names for r in outcome.run.results[n]])
    if args.json:
        docs = {
            n: result_json(
                outcome.summaries[n],
                outcome.run.results[n],
                chat=cfg.chat,
                model=outcome.model,
                tokenizer=cfg.tokenizer,
                num_prompts=cfg.num_requests,
                request_rate=cfg.rate,
                max_concurrency=cfg.options.max_concurrency,
                detailed=args.detailed,
                extra={"url": dict(cfg.targets)[n], "stopped": outcome.run.stopped},
            )
            for n in names
        }
        print_json(docs[""] if names == [""] else {"arms": docs})
    else:
        out = Console()
        title = (
            f"dualpool bench: {cfg.workload}, {cfg.num_requests:,} requests, model {outcome.model}"
        )
        if names == [""]:
            t = summary_table(outcome.summaries, title)
        else:
            t = summary_table(
                {f"{n}: {dict(cfg.targets)[n]}": outcome.summaries[n] for n in names}, title
            )
        out.print(t)
        if outcome.run.stopped:
            out.print(f"[yellow]stopped early: {outcome.run.stopped}[/]")
    if outcome.run.stopped == "interrupted":
        return 130
    return 0


def _run_loop(main: Callable[[], Any]) -> Any:
    try:
        import uvloop

        return uvloop.run(main())
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(1)
