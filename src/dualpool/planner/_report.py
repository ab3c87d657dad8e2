"""How a plan is shown: a rich text report that explains itself, and an HTML page.

`render_text(plan, console)` prints the plan; `write_html(plan, mix, dir)`
writes `dir/index.html`, self-contained (the PNG plots are embedded as
base64 data URIs), with four matplotlib figures:

1. the CDF of request budgets (prompt + declared output), B_short marked;
2. the saving at each B_short of the sweep;
3. GPUs per pool, homogeneous vs split;
4. TTFT and TPOT distributions, homogeneous vs split (simulated requests).
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from dualpool.planner._plan import Mix

__all__ = ["render_text", "write_html"]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _s(x: float | None, unit: str = "s") -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x * 1000:.0f} ms" if unit == "ms" else f"{x:.2f} s"


def _explain(p: dict[str, Any]) -> list[str]:
    alpha, rho = p["alpha"], p.get("rho")
    b = p["inputs"]["b_short"]
    lines = [
        f"alpha = {alpha:.4f}: the share of requests whose budget (prompt + declared output) "
        f"is at most B_short = {b:,} tokens; they go to the short pool.",
    ]
    if rho is not None:
        lines.append(
            f"rho = {rho:.2f}: requests/s one short-pool instance completes on its share, over "
            "what one long-config instance completes on the whole mix (engine model, saturated). "
            "The paper assumes rho = 4."
        )
    cf = p.get("closed_form")
    if cf:
        lines.append(
            f"closed form alpha(1 - 1/rho) = {cf['saving']:.1%}: no ceilings, no SLOs, every "
            "instance run at 100%."
        )
    d = p.get("discrete")
    if d:
        lines.append(
            f"discrete form (ceilings, utilization cap {p['inputs']['utilization_cap']:.0%}): "
            f"{d['homogeneous_gpus']:,} -> {d['split_gpus']:,} GPUs ({d['saving']:.1%})."
        )
    lines.append(
        f"SLO-aware queueing estimate: {p['analytic_saving']:.1%}. It keeps each instance "
        "where the P99 TTFT/TPOT model still meets the SLOs; the short pool's TPOT suffers "
        "from prompt prefills sharing steps with decodes, so it runs far below saturation."
    )
    if p["inputs"]["simulated"]:
        lines.append(
            f"simulation-verified: {p['saving']:.1%}. The search runs the simulator at each "
            "candidate count and keeps the smallest that meets the P99 SLOs; it differs from the "
            "closed form because capacity is set by latency, not by throughput, and because the "
            "long share of work is larger than the long share of requests."
        )
    return lines


def render_text(p: dict[str, Any], console: Console) -> None:
    """The plan as tables plus the sentences that explain them."""
    inp = p["inputs"]
    console.print(
        f"[bold]dualpool plan[/]: {inp['workload']} ({inp['requests']:,} requests) at "
        f"{inp['rate']:,.0f} req/s, {inp['model']} ({inp['weight_dtype']}) on {inp['gpu']}, "
        f"${inp['price_per_gpu_hour']:.2f}/GPU-hour; SLO P99 TTFT <= {inp['ttft_slo_s']:g} s, "
        f"P99 TPOT <= {inp['tpot_slo_s'] * 1000:g} ms"
        + ("" if inp["memory_check"] else " [yellow](memory check OFF)[/]")
    )
    t = Table(title="Fleets")
    for col in (
        "fleet",
        "pool",
        "config",
        "share",
        "mu req/s",
        "discrete",
        "queueing",
        "simulated",
        "GPUs",
    ):
        t.add_column(col, justify="left" if col in ("fleet", "pool", "config") else "right")
    for fleet in ("homogeneous", "split"):
        for pool in p[fleet]["pools"]:
            c = pool["config"]
            an = pool.get("analytic") or {}
            sim = pool.get("simulation")
            t.add_row(
                fleet,
                pool["pool"],
                f"{c['max_model_len'] // 1024}K/{c['max_num_seqs']}/"
                f"{c['max_num_batched_tokens'] // 1024}K TP{c['tensor_parallel_size']}",
                _pct(pool["share"]),
                f"{pool['engine']['mu']:.2f}" if pool.get("engine") else "-",
                str(an.get("discrete", "-")),
                str(an.get("queueing", "-")) + ("" if an.get("slo_attainable", True) else " (!)"),
                str(sim["instances"]) if sim else "-",
                f"{pool['gpus']:,}",
            )
    console.print(t)
    t = Table(title="Cost and service")
    for col in (
        "",
        "GPUs",
        "GPU-h/day",
        "$/year",
        "P99 TTFT",
        "P99 TPOT",
        "preempt/1k",
        "rejected",
    ):
        t.add_column(col, justify="right")
    for fleet in ("homogeneous", "split"):
        f = p[fleet]
        t.add_row(
            fleet,
            f"{f['gpus']:,}",
            f"{f['gpu_hours_per_day']:,.0f}",
            f"${f['usd_per_year']:,.0f}",
            _s(f.get("ttft_p99_s")),
            _s(f.get("tpot_p99_s"), "ms"),
            f"{f['preemptions_per_1k']:.1f}" if "preemptions_per_1k" in f else "-",
            str(f.get("rejected", "-")),
        )
    console.print(t)
    console.print(
        f"[bold]saving {p['saving']:.1%}[/] (${p['usd_saved_per_year']:,.0f}/year); "
        f"recommendation: [bold]{p['recommendation']}[/]"
    )
    for line in _explain(p):
        console.print(f"  - {line}")
    for pool in p["split"]["pools"]:
        an = pool.get("analytic") or {}
        if an and not an.get("slo_attainable", True):
            console.print(
                f"  - [yellow]{pool['pool']} pool: no size meets the SLOs[/]: even an idle instance "
                f"has P99 TTFT {_s(an['idle_ttft_p99_s'])} (prefill of its longest prompts); it is "
                "sized by the utilization cap."
            )
    sw = p["sweep"]
    t = Table(title=f"B_short sweep ({sw['basis'].replace('_', ' ')})")
    for col in ("B_short", "alpha", "GPUs (analytic)", "saving (analytic)", "saving (simulated)"):
        t.add_column(col, justify="right")
    for r in sw["rows"]:
        t.add_row(
            f"{r['b_short']:,}",
            f"{r['alpha']:.3f}",
            f"{r['analytic_gpus']:,}",
            _pct(r["analytic_saving"]),
            _pct(r["saving"]) if sw["basis"] == "saving" or r["b_short"] == inp["b_short"] else "-",
        )
    console.print(t)
    if sw["best"]:
        rng = sw["range_80"]
        console.print(
            f"best B_short {sw['best']['b_short']:,} ({sw['best']['saving']:.1%}); "
            + (f"{rng[0]:,}..{rng[1]:,} keep 80% of it" if rng else "")
        )
    if "three_pool" in p:
        tp = p["three_pool"]
        console.print(
            f"three pools ({' / '.join(x['pool'] for x in tp['pools'])}): analytic saving "
            f"{tp['analytic_saving']:.1%} vs {p['analytic_saving']:.1%} with two."
        )


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figures(p: dict[str, Any], mix: Mix) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[tuple[str, str]] = []
    b = p["inputs"]["b_short"]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    xs = np.sort(mix.budget)
    ax.plot(xs, np.arange(1, xs.size + 1) / xs.size)
    ax.axvline(b, color="red", linestyle="--", label=f"B_short = {b:,} (alpha {p['alpha']:.3f})")
    ax.set_xscale("log")
    ax.set_xlabel("request budget, tokens (prompt + declared output)")
    ax.set_ylabel("CDF")
    ax.legend()
    out.append(("Token-budget CDF", _png(fig)))
    plt.close(fig)

    rows = p["sweep"]["rows"]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    bs = [r["b_short"] for r in rows]
    ax.plot(bs, [r["analytic_saving"] * 100 for r in rows], marker="o", label="queueing model")
    sim = [
        (r["b_short"], r["saving"] * 100)
        for r in rows
        if p["sweep"]["basis"] == "saving" or r["b_short"] == b
    ]
    if p["inputs"]["simulated"] and sim:
        ax.plot(*zip(*sim, strict=True), marker="s", linestyle="", label="simulated")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("B_short (tokens)")
    ax.set_ylabel("saving, % of GPUs")
    ax.legend()
    out.append(("Saving vs B_short", _png(fig)))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.4))
    labels, bottoms = ["homogeneous", "split"], [0.0, 0.0]
    for i, fleet in enumerate(labels):
        for pool in p[fleet]["pools"]:
            ax.bar(i, pool["gpus"], bottom=bottoms[i], label=f"{fleet}: {pool['pool']}")
            bottoms[i] += pool["gpus"]
    ax.set_xticks([0, 1], labels)
    ax.set_ylabel("GPUs")
    ax.legend(fontsize=8)
    out.append(("GPUs per pool", _png(fig)))
    plt.close(fig)

    samples = {f: p[f].get("samples") for f in ("homogeneous", "split")}
    if all(samples.values()):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        for ax, metric, slo in (
            (axes[0], "ttft", p["inputs"]["ttft_slo_s"]),
            (axes[1], "tpot", p["inputs"]["tpot_slo_s"]),
        ):
            for fleet, s in samples.items():
                assert s is not None
                v = np.sort(np.asarray(s[metric]))
                if v.size:
                    ax.plot(v, np.arange(1, v.size + 1) / v.size, label=fleet)
            ax.axvline(slo, color="red", linestyle="--", label="SLO")
            ax.set_xlabel(f"{metric.upper()} (s)")
            ax.set_ylabel("CDF")
            ax.legend()
        out.append(("TTFT and TPOT, homogeneous vs split (simulated)", _png(fig)))
        plt.close(fig)
    return out


def write_html(p: dict[str, Any], mix: Mix, directory: str | Path, text: str) -> Path:
    """Write DIR/index.html (plots embedded); returns its path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    figs = _figures(p, mix)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>dualpool plan</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
        "pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}"
        "figure{display:inline-block;margin:1em}</style></head><body>",
        "<h1>dualpool plan</h1>",
        f"<p><b>Recommendation: {html.escape(p['recommendation'])}</b>; saving "
        f"{p['saving']:.1%} (${p['usd_saved_per_year']:,.0f} a year).</p>",
        "<ul>",
        *[f"<li>{html.escape(line)}</li>" for line in _explain(p)],
        "</ul>",
    ]
    for title, data in figs:
        parts.append(
            f"<figure><img class='plot' alt='{html.escape(title)}' "
            f"src='data:image/png;base64,{data}'><figcaption>{html.escape(title)}</figcaption>"
            "</figure>"
        )
    parts += ["<h2>Report</h2>", f"<pre>{html.escape(text)}</pre>", "</body></html>"]
    path = d / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
