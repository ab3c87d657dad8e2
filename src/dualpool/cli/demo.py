"""`dualpool demo`: the whole product on one machine, no GPU.

Starts two emulated vLLM pools (`dualpool emulate`: a short pool with
max_model_len 8192 and 128 sequences, a long pool with 65536 and 16), puts the
gateway (`dualpool serve`) in front of them, and replays seeded chat requests
(prose, code, Chinese, Japanese, tool calls; mostly short, some long; some
streamed) over real HTTP. The gateway estimates each request's token budget
without a tokenizer, routes it, and learns bytes per token from the usage the
emulated instances count with the real Llama-3 tokenizer. The demo reports where
requests went, their latency, and what the gateway learned.

--offline runs the estimator and pool policy alone, in process, with the
tokenizer playing the backend: no servers, and a per-request table of decisions.

--compare runs the A/B the project exists for: the same GPUs as one
homogeneous long-context pool and as a short + long split (counts from the
verified planner on --workload at --rate; the budget is the smaller planned
fleet), each behind its own gateway, the same workload replayed through both
at once, time-compressed to about a minute; then a side-by-side table, the
simulator's prediction for both arms on the same requests beside the
measurement, both with intervals, and with --report DIR an HTML page with
the latency CDFs of both arms.
"""

from __future__ import annotations

import argparse
import collections
import io
from typing import Any

from rich.console import Console
from rich.table import Table

from dualpool.budget import EstimatorConfig
from dualpool.cli.common import add_pool_args, pools_from_args, print_json
from dualpool.errors import ConfigError
from dualpool.router import Router
from dualpool.samples import sample_bodies
from dualpool.tokenizers import Tokenizer, chat_prompt_tokens, load_tokenizer


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo",
        help="route an embedded sample workload and show what was decided and why",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--requests", type=int, default=None, help="requests to send (default 300; --compare 480)"
    )
    p.add_argument(
        "--offline",
        action="store_true",
        help="estimator and policy only, in process (no emulator, no gateway)",
    )
    p.add_argument("--concurrency", type=int, default=32, help="clients in parallel (default 32)")
    p.add_argument(
        "--speedup",
        type=float,
        default=None,
        help="emulated GPU time per wall second (default 20; --compare 2)",
    )
    p.add_argument("--compare", action="store_true", help="A/B: homogeneous vs split, same GPUs")
    p.add_argument(
        "--workload",
        default="lmsys-like",
        help="--compare: workload spec (lmsys-like: the split ahead; agent-heavy with --rate 2 "
        "--requests 800 --speedup 8: the mix where the planner predicts no advantage)",
    )
    p.add_argument("--rate", type=float, default=7.0, help="--compare: req/s, modelled (7)")
    p.add_argument("--model", default="llama-3-70b", help="--compare: model (llama-3-70b)")
    p.add_argument("--gpu", default="a100-80gb", help="--compare: GPU (a100-80gb)")
    p.add_argument("--report", default=None, metavar="DIR", help="--compare: write DIR/index.html")
    p.add_argument("--seed", type=int, default=0, help="workload seed (default 0)")
    p.add_argument("--show", type=int, default=12, help="decisions to list at the end")
    p.add_argument(
        "--tokenizer",
        default="llama3",
        choices=("llama3", "qwen", "bytes"),
        help="tokenizer that plays the backend's usage count (default llama3)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_pool_args(p)
    p.set_defaults(func=run)


def _true_prompt(tok: Tokenizer, body: dict[str, Any]) -> int:
    return chat_prompt_tokens(tok, body["messages"], body.get("tools"))


def calibrator_table(cats: list[dict[str, Any]], title: str) -> Table:
    """The calibrator's per-category view (`Calibrator.categories()`) as a table."""
    model = cats[0]["model"] if cats else "?"
    t = Table(title=f"{title} ({model})")
    for col in ("class", "samples", "bytes/token", "conservative c*", "overhead a + m·msgs"):
        t.add_column(col, justify="right" if col != "class" else "left")
    for c in cats:
        t.add_row(
            c["class"],
            str(c["samples"]),
            f"{c['bytes_per_token']:.2f}" if c["learned"] else "4.00 (prior)",
            f"{c['bytes_per_token_conservative']:.2f}",
            f"{c['overhead_per_request']:.1f} + {c['overhead_per_message']:.1f}·m",
        )
    return t


def run(args: argparse.Namespace) -> int:
    if args.compare:
        return run_compare(args)
    if args.requests is None:
        args.requests = 300
    if args.speedup is None:
        args.speedup = 20.0
    if args.requests < 1:
        raise ConfigError("--requests", f"must be >= 1, got {args.requests}")
    if args.offline:
        return run_offline(args)
    if args.concurrency < 1:
        raise ConfigError("--concurrency", f"must be >= 1, got {args.concurrency}")
    if not args.speedup > 0:
        raise ConfigError("--speedup", f"must be > 0, got {args.speedup}")
    pools = pools_from_args(args)
    if len(pools) != 2:
        raise ConfigError("--pools", "the demo runs exactly two pools (short and long)")
    short_spec, long_spec = sorted(pools, key=lambda p: p.max_model_len)
    return show_stack(args, short_spec.effective_threshold, long_spec.max_model_len)


def show_stack(args: argparse.Namespace, b_short: int, long_len: int) -> int:
    from rich.progress import Progress

    from dualpool.demo import run_demo

    console = Console(stderr=True)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("starting emulated pools and the gateway", total=args.requests)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, description=f"requests {done}/{total}")

        result = run_demo(
            requests=args.requests,
            seed=args.seed,
            concurrency=args.concurrency,
            speedup=args.speedup,
            b_short=b_short,
            long_len=long_len,
            progress=progress,
        )
    outs = result.outcomes
    per_pool: dict[str, list[Any]] = collections.defaultdict(list)
    for o in outs:
        per_pool[o.pool].append(o)
    failed = [o for o in outs if o.status != 200]

    def metric(prefix: str) -> dict[str, float]:
        return {k: v for k, v in result.metrics.items() if k.startswith(prefix)}

    def total(prefix: str) -> int:
        return int(sum(metric(prefix).values()))

    cats = result.calibrator.get("categories", [])
    summary = {
        "requests": len(outs),
        "ok": len(outs) - len(failed),
        "failed": len(failed),
        "per_pool": {k: len(v) for k, v in sorted(per_pool.items())},
        "misroutes": total("dualpool_misroutes_total"),
        "retries": total("dualpool_retries_total"),
        "spillovers": total("dualpool_spillovers_total"),
        "categories": {c["category"]: round(c["bytes_per_token"], 3) for c in cats},
        "wall_s": round(result.wall_s, 2),
    }
    if args.json:
        print_json(summary)
        return 0 if not failed else 1
    out = Console()
    out.print(
        f"[bold]dualpool demo[/]: {len(outs)} chat requests through the gateway to two "
        f"emulated vLLM pools (short: max_model_len {b_short:,}; long: {long_len:,}), "
        f"speedup {args.speedup:g}, {args.concurrency} clients, {result.wall_s:.1f} s."
    )
    t = Table(title="Where requests went (client-side latency, wall seconds)")
    for col in ("pool", "requests", "streamed", "mean prompt tokens", "p50 TTFT", "p99 E2E"):
        t.add_column(col, justify="right" if col != "pool" else "left")
    for name, group in sorted(per_pool.items()):
        ttfts = sorted(o.ttft_s for o in group)
        e2e = sorted(o.e2e_s for o in group)
        mean_prompt = sum(o.prompt_tokens for o in group) / len(group)
        t.add_row(
            name,
            str(len(group)),
            str(sum(o.stream for o in group)),
            f"{mean_prompt:,.0f}",
            f"{ttfts[len(ttfts) // 2]:.3f}",
            f"{e2e[min(len(e2e) - 1, int(len(e2e) * 0.99))]:.3f}",
        )
    out.print(t)
    out.print(calibrator_table(cats, "What the gateway learned from usage.prompt_tokens"))
    reasons = {
        k.split('reason="')[1].split('"')[0]: int(v)
        for k, v in metric("dualpool_routing_decisions_total").items()
        if 'reason="' in k
    }
    out.print(
        "Routing reasons: "
        + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
        + f" | misroutes retried on the long pool: {summary['misroutes']}"
        + f" | retries: {summary['retries']} | spillovers: {summary['spillovers']}"
    )
    if failed:
        out.print(
            f"[red]{len(failed)} requests failed[/], e.g. {failed[0].status} {failed[0].error}"
        )
        return 1
    out.print("Every request got exactly one answer; none failed.")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dualpool.compare import CompareSettings, run_compare
    from dualpool.compare_report import compare_json, compare_table, prediction_lines, write_report

    settings = CompareSettings(
        workload=args.workload,
        rate=args.rate,
        requests=480 if args.requests is None else args.requests,
        model=args.model,
        gpu=args.gpu,
        speedup=2.0 if args.speedup is None else args.speedup,
        seed=args.seed,
    )
    err = Console(stderr=True)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    tasks: dict[str, Any] = {}

    def progress(what: str, arms: list[Any] | None, elapsed: float) -> None:
        if arms is None:
            if "stage" not in tasks:
                tasks["stage"] = bar.add_task(what, total=None, info="")
            bar.update(tasks["stage"], description=what)
            return
        for a in arms:
            if a.name not in tasks:
                tasks[a.name] = bar.add_task(a.name, total=settings.requests, info="")
            bar.update(
                tasks[a.name],
                completed=a.done,
                info=f"ok {a.ok} failed {a.failed} in flight {a.in_flight}",
            )

    with bar:
        res = run_compare(settings, progress=progress)
    if args.json:
        print_json(compare_json(res))
        return 0
    out = Console()
    table = compare_table(res)
    out.print(table)
    for line in prediction_lines(res):
        out.print(line)
    out.print(
        f"wall time {res.wall_s:.1f} s"
        + (
            f"; stopped: {res.stopped} (requests still running were aborted; the prediction "
            "stops at the same modelled time)"
            if res.stopped
            else ""
        )
    )
    if args.report:
        cap = Console(width=140, record=True, file=io.StringIO())
        cap.print(table)
        path = write_report(res, args.report, cap.export_text())
        out.print(f"report: {path}")
    return 0


def run_offline(args: argparse.Namespace) -> int:
    if args.requests < 1:
        raise ConfigError("--requests", f"must be >= 1, got {args.requests}")
    router = Router(pools_from_args(args), EstimatorConfig())
    policy = router.policy
    tok = load_tokenizer(args.tokenizer)
    bodies = sample_bodies(args.requests, seed=args.seed)
    b_short = policy.pools[0].effective_threshold
    per_pool: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    unsafe = wasted = truly_short = 0
    rows: list[tuple[str, ...]] = []
    console = Console(stderr=False)
    for i, sample in enumerate(bodies):
        routed = router.route(sample.body)
        est, dec = routed.estimate, routed.decision
        truth = _true_prompt(tok, sample.body)
        true_total = truth + est.output_tokens
        per_pool[dec.pool_name or "rejected"] += 1
        reasons[dec.reason.value] += 1
        short = true_total <= b_short
        truly_short += short
        if dec.pool == 0 and not short:
            unsafe += 1
        if dec.pool > 0 and short:
            wasted += 1
        router.observe(routed, {"prompt_tokens": truth, "completion_tokens": 0})
        if i >= len(bodies) - args.show:
            rows.append(
                (
                    sample.kind,
                    est.category.split("/")[-1],
                    f"{routed.features.total_bytes:,}",
                    f"{est.prompt_tokens_point:,}",
                    f"{truth:,}",
                    f"{est.output_tokens:,} ({est.output_source})",
                    f"{est.total:,}",
                    dec.pool_name or "-",
                    dec.reason.value,
                )
            )
    cats = router.estimator.calibrator.categories()
    summary = {
        "requests": len(bodies),
        "b_short": b_short,
        "per_pool": dict(per_pool),
        "reasons": dict(reasons),
        "unsafe_misroutes": unsafe,
        "wasted_long": wasted,
        "truly_short": truly_short,
        "categories": {c["category"]: round(c["bytes_per_token"], 3) for c in cats},
    }
    if args.json:
        print_json(summary)
        return 0
    console.print(
        f"[bold]dualpool demo[/]: {len(bodies)} seeded chat requests, pools "
        + ", ".join(
            f"{p.name} (max_model_len {p.max_model_len:,}, threshold {p.effective_threshold:,})"
            for p in policy.pools
        )
        + f"; the backend's usage is counted with the {tok.name} tokenizer."
    )
    console.print(calibrator_table(cats, "What the calibrator learned from usage.prompt_tokens"))
    t = Table(title=f"The last {len(rows)} decisions")
    for col in (
        "kind",
        "class",
        "bytes",
        "prompt est.",
        "prompt true",
        "output budget",
        "budget",
        "pool",
        "reason",
    ):
        t.add_column(col)
    for r in rows:
        t.add_row(*r)
    console.print(t)
    console.print(
        "Routed: "
        + ", ".join(f"{k} {v}" for k, v in sorted(per_pool.items()))
        + " | reasons: "
        + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
    )
    console.print(
        f"Unsafe misroutes (sent short, truly over {b_short:,}): {unsafe}; "
        f"wasted (sent long, truly short): {wasted} of {truly_short} truly short."
    )
    return 0
