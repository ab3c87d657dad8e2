"""`dualpool demo`: the estimator and pool policy at work on an embedded workload.

Generates seeded chat requests (prose, code, Chinese, Japanese, tool calls;
mostly short, some long), routes each by its estimated token budget, and plays
the backend's part by counting the prompt exactly with the Llama-3 tokenizer
and its chat template, as vLLM would report in `usage.prompt_tokens`. The
calibrator learns from that feedback; the demo then shows what it learned and,
request by request, what it decided and why.
"""

from __future__ import annotations

import argparse
import collections
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
    p.add_argument("--requests", type=int, default=1000, help="requests to route (default 1000)")
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


def run(args: argparse.Namespace) -> int:
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
    t = Table(title="What the calibrator learned from usage.prompt_tokens")
    for col in ("category", "samples", "bytes/token", "conservative c*", "overhead a + m·msgs"):
        t.add_column(col, justify="right" if col != "category" else "left")
    for c in cats:
        t.add_row(
            c["category"],
            str(c["samples"]),
            f"{c['bytes_per_token']:.2f}" if c["learned"] else "4.00 (prior)",
            f"{c['bytes_per_token_conservative']:.2f}",
            f"{c['overhead_per_request']:.1f} + {c['overhead_per_message']:.1f}·m",
        )
    console.print(t)
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
