"""How a plan is shown: a rich text report that explains itself, and an HTML page.

`render_text(plan, console)` prints the plan; `write_html(plan, mix, dir)`
writes `dir/index.html`, one self-contained page (PNG plots embedded as
base64 data URIs) a person can read and forward: the recommendation and its
caveats first, then HTML tables, then the figures, each verified figure with
its 95% interval:

1. the saving at each B_short (analytic line; verified points with intervals);
2. the saving against the fleet's rate (analytic curve; the verified point);
3. the saving on each window (the replications) with the mean and interval;
4. GPUs per fleet: provisioned, and the count the windows need (interval);
5. TTFT and TPOT, homogeneous vs split, on the same requests (simulated
   only: without a simulation there is no such figure);
6. the CDF of request budgets, B_short marked.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dualpool.planner._plan import Mix

__all__ = ["caveats", "headline", "render_text", "write_html"]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _pm_pct(x: float | None, ci: dict[str, Any] | None) -> str:
    """'23.4% +- 1.2' (points) when there is an interval."""
    if x is None:
        return "-"
    hw = ci.get("half_width") if ci else None
    return f"{x:.1%}" + (f" ± {hw * 100:.1f}" if hw is not None else "")


def _s(x: float | None, unit: str = "s") -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x * 1000:.0f} ms" if unit == "ms" else f"{x:.2f} s"


def _pm_s(x: float | None, ci: dict[str, Any] | None, unit: str = "s") -> str:
    if x is None:
        return "-"
    hw = ci.get("half_width") if ci else None
    if hw is None:
        return _s(x, unit)
    if unit == "ms":
        return f"{x * 1000:.0f} ± {hw * 1000:.0f} ms"
    return f"{x:.2f} ± {hw:.2f} s"


def _pm_n(ci: dict[str, Any] | None) -> str:
    if not ci or ci.get("mean") is None:
        return "-"
    hw = ci.get("half_width")
    return f"{ci['mean']:,.1f}" + (f" ± {hw:,.1f}" if hw is not None else "")


def headline(p: dict[str, Any]) -> str:
    """One sentence: the recommendation, the saving and how sure it is."""
    rec = p["recommendation"]
    sv, ci = p["saving"], p.get("saving_ci")
    usd = p["usd_saved_per_year"]
    if ci:
        ver = p["verification"]
        conf = p.get("recommendation_confidence")
        return (
            f"Recommendation: {rec}. The split needs {sv:.1%} fewer GPUs "
            f"(± {ci['half_width'] * 100:.1f} points: 95% interval {ci['low']:.1%} to "
            f"{ci['high']:.1%}, {ver['windows']} windows of "
            f"the workload, both fleets on the same requests); confidence that it saves: "
            f"{conf:.1%}. Provisioned: {p['homogeneous']['gpus']:,} -> {p['split']['gpus']:,} "
            f"GPUs (${usd:,.0f} a year)."
        )
    return (
        f"Recommendation: {rec} (analytic only, no simulation: no interval). Saving "
        f"{sv:.1%}: {p['homogeneous']['gpus']:,} -> {p['split']['gpus']:,} GPUs "
        f"(${usd:,.0f} a year)."
    )


def caveats(p: dict[str, Any]) -> list[str]:
    """What a reader must know before acting on the plan."""
    out: list[str] = []
    ver = p.get("verification")
    ci = p.get("saving_ci")
    if ver is None:
        out.append(
            "Not verified by simulation (--no-simulate): the counts are the SLO-aware "
            "estimate, with no confidence interval."
        )
    else:
        if ci and ci["low"] is not None and ci["low"] <= 0 <= ci["high"]:
            out.append(
                "The saving's 95% interval includes 0: on this workload the split is not "
                "reliably cheaper."
            )
        if not ver["converged"]:
            out.append(
                f"The saving's half-width ({(ci or {}).get('half_width', 0) * 100:.1f} points) is "
                f"above the requested precision ({ver['precision'] * 100:.1f}) after "
                f"{ver['windows']} windows (--max-windows)."
            )
        if ver["overlapping"]:
            out.append(
                f"The workload holds {ver['input_requests']:,} requests: {ver['windows']} windows "
                f"of {ver['block_requests']:,} overlap (disjoint: {ver['disjoint_windows']}), "
                "so the windows are not fully independent and the intervals are "
                "somewhat too narrow."
            )
        for fleet in ("homogeneous", "split"):
            for pool in p[fleet]["pools"]:
                sim = pool.get("simulation") or {}
                test = sim.get("slo_test")
                if test and not test["meets"]:
                    out.append(
                        f"{fleet} / {pool['pool']}: at {sim['instances']:,} instances the P99s "
                        f"meet the SLOs with {test['confidence']:.0%} confidence only "
                        f"({test['windows_meeting']} of {test['windows']} windows)."
                    )
    for fleet in ("homogeneous", "split"):
        for pool in p[fleet]["pools"]:
            an = pool.get("analytic") or {}
            if an and not an.get("slo_attainable", True):
                out.append(
                    f"{fleet} / {pool['pool']}: no size meets the SLOs (even an idle instance "
                    f"has P99 TTFT {_s(an['idle_ttft_p99_s'])}: the prefill of its longest "
                    "prompts); sized by the utilization cap."
                )
    if not p["inputs"]["memory_check"]:
        out.append(
            "vLLM's memory check is OFF (the paper's setting): the configs do not fit the GPU; "
            "this models the paper's claim, not hardware that exists."
        )
    out.append(
        "The engine's step times are the uncalibrated defaults unless calibrated on your GPUs "
        "(docs/engine-model.md); the counts are as good as that model."
    )
    return out


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
        f"SLO-aware estimate: {p['analytic_saving']:.1%}. Each pool's largest per-instance load "
        "meeting the P99 SLOs, read off a simulated load curve; the short pool's TPOT suffers "
        "from prompt prefills sharing steps with decodes, so it runs far below saturation."
    )
    ver = p.get("verification")
    if ver:
        lines.append(
            f"verified: {_pm_pct(p['saving'], p['saving_ci'])} points. Whole pools simulated on "
            f"{ver['windows']} windows of the workload ({ver['block_requests']:,} requests each, "
            f"retimed to {p['inputs']['rate']:,.0f} req/s, looped; {_warm(ver)} of warm-up, then "
            f"at least {ver['measured_s']:.0f} s measured); on each window the homogeneous and the split "
            "fleet see the same requests at the same times, each pool searched for the count "
            "where its P99s meet the SLOs. The provisioned counts meet them at "
            f"{ver['confidence']:.0%} confidence (one-sided t-test over windows)."
        )
    return lines


def _warm(ver: dict[str, Any]) -> str:
    w = [x["warmup_s"] for x in ver.get("pools", {}).values()]
    if not w:
        return f"{ver['warmup_s']:.0f} s"
    lo, hi = min(w), max(w)
    return f"{lo:.0f} s" if hi - lo < 0.5 else f"{lo:.0f} to {hi:.0f} s (by pool)"


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
    console.print(f"[bold]{escape(headline(p))}[/]")
    for c in caveats(p)[:-1]:
        console.print(f"  [yellow]! {escape(c)}[/]")
    t = Table(title="Fleets")
    for col in (
        "fleet",
        "pool",
        "config",
        "share",
        "mu req/s",
        "discrete",
        "estimate",
        "needed (95% CI)",
        "provisioned",
        "GPUs",
    ):
        t.add_column(col, justify="left" if col in ("fleet", "pool", "config") else "right")
    for row in _fleet_rows(p):
        t.add_row(*row)
    console.print(t)
    t = Table(title="Cost and service (P99s: mean ± 95% half-width over windows)")
    for col in _SERVICE_COLUMNS:
        t.add_column(col, justify="right")
    for row in _service_rows(p):
        t.add_row(*row)
    console.print(t)
    for line in _explain(p):
        console.print(f"  - {line}")
    sw = p["sweep"]
    t = Table(title=f"B_short sweep (best by {sw['basis'].replace('_', ' ')})")
    for col in _SWEEP_COLUMNS:
        t.add_column(col, justify="right")
    for row in _sweep_rows(p):
        t.add_row(*row)
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


def _fleet_rows(p: dict[str, Any]) -> list[list[str]]:
    rows = []
    for fleet in ("homogeneous", "split"):
        for pool in p[fleet]["pools"]:
            c = pool["config"]
            an = pool.get("analytic") or {}
            sim = pool.get("simulation")
            rows.append(
                [
                    fleet,
                    pool["pool"],
                    f"{c['max_model_len'] // 1024}K/{c['max_num_seqs']}/"
                    f"{c['max_num_batched_tokens'] // 1024}K TP{c['tensor_parallel_size']}",
                    _pct(pool["share"]),
                    f"{pool['engine']['mu']:.2f}" if pool.get("engine") else "-",
                    f"{an['discrete']:,}" if "discrete" in an else "-",
                    (f"{an['queueing']:,}" if "queueing" in an else "-")
                    + ("" if an.get("slo_attainable", True) else " (!)"),
                    _pm_n(sim["needed"]) if sim else "-",
                    f"{sim['instances']:,}" if sim else "-",
                    f"{pool['gpus']:,}",
                ]
            )
    return rows


_SERVICE_COLUMNS = (
    "",
    "GPUs",
    "GPUs needed (95% CI)",
    "GPU-h/day",
    "$/year",
    "P99 TTFT",
    "P99 TPOT",
    "SLO met (confidence)",
    "preempt/1k",
    "rejected",
)


def _service_rows(p: dict[str, Any]) -> list[list[str]]:
    rows = []
    for fleet in ("homogeneous", "split"):
        f = p[fleet]
        conf = f.get("slo_confidence")
        rows.append(
            [
                fleet,
                f"{f['gpus']:,}",
                _pm_n(f.get("gpus_needed")),
                f"{f['gpu_hours_per_day']:,.0f}",
                f"${f['usd_per_year']:,.0f}",
                _pm_s(f.get("ttft_p99_s"), f.get("ttft_p99_ci")),
                _pm_s(f.get("tpot_p99_s"), f.get("tpot_p99_ci"), "ms"),
                "-" if conf is None else f"{conf:.1%}",
                f"{f['preemptions_per_1k']:.1f}" if "preemptions_per_1k" in f else "-",
                str(f.get("rejected", "-")),
            ]
        )
    return rows


_SWEEP_COLUMNS = ("B_short", "alpha", "GPUs (estimate)", "saving (estimate)", "saving (verified)")


def _sweep_rows(p: dict[str, Any]) -> list[list[str]]:
    return [
        [
            f"{r['b_short']:,}",
            f"{r['alpha']:.3f}",
            f"{r['analytic_gpus']:,}",
            _pct(r["analytic_saving"]),
            _pm_pct(r.get("saving"), r.get("saving_ci")),
        ]
        for r in p["sweep"]["rows"]
    ]


# -- HTML ------------------------------------------------------------------------------


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figures(p: dict[str, Any], mix: Mix) -> list[tuple[str, str, str]]:
    """(title, caption, base64 PNG) of every figure that has something to show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[tuple[str, str, str]] = []
    b = p["inputs"]["b_short"]
    ver = p.get("verification")

    def errbar(ax: Any, x: Sequence[float], ci: Sequence[dict[str, Any]], label: str) -> None:
        ys = [c["mean"] * 100 for c in ci]
        err = [(c["half_width"] or 0.0) * 100 for c in ci]
        ax.errorbar(x, ys, yerr=err, fmt="s", color="C3", capsize=5, label=label)

    # 1. Saving vs B_short.
    rows = p["sweep"]["rows"]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    bs = [r["b_short"] for r in rows]
    ax.plot(bs, [r["analytic_saving"] * 100 for r in rows], marker="o", label="SLO-aware estimate")
    vr = [r for r in rows if r.get("saving_ci")]
    if vr:
        errbar(ax, [r["b_short"] for r in vr], [r["saving_ci"] for r in vr], "verified, 95% CI")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("B_short (tokens)")
    ax.set_ylabel("saving, % of GPUs")
    ax.legend()
    cap = (
        "Verified points (whole pools on every window, 95% interval) at each B_short."
        if len(vr) > 1
        else "Verified at the chosen B_short only (95% interval); --simulate-sweep verifies "
        "every point."
        if vr
        else "Estimate only (no simulation)."
    )
    out.append(("Saving vs B_short", cap, _png(fig)))
    plt.close(fig)

    # 2. Saving vs rate.
    curve = p.get("rate_curve") or []
    if curve:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        ax.plot(
            [c["rate"] for c in curve],
            [c["analytic_saving"] * 100 for c in curve],
            marker="o",
            label="estimate (per-instance load held)",
        )
        if p.get("saving_ci"):
            errbar(ax, [p["inputs"]["rate"]], [p["saving_ci"]], "verified, 95% CI")
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("fleet arrival rate, req/s")
        ax.set_ylabel("saving, % of GPUs")
        ax.legend()
        out.append(
            (
                "Saving vs rate",
                "The estimate scales each pool at its largest per-instance load meeting the "
                "SLOs (whole instances, utilization cap); small pools pool less and need more. "
                "Verified (95% interval) at the planned rate.",
                _png(fig),
            )
        )
        plt.close(fig)

    if ver:
        # 3. The replications.
        sv = ver["per_window_saving"]
        ci = p["saving_ci"]
        fig, ax = plt.subplots(figsize=(6, 3.0))
        xs = np.arange(1, len(sv) + 1)
        ax.plot(xs, [x * 100 for x in sv], "o", label="saving on one window")
        ax.axhline(ci["mean"] * 100, color="C3", label="mean")
        if ci["half_width"] is not None:
            ax.axhspan(ci["low"] * 100, ci["high"] * 100, color="C3", alpha=0.2, label="95% CI")
        ax.set_xlabel("window")
        ax.set_ylabel("saving, % of GPUs")
        ax.legend(fontsize=8)
        out.append(
            (
                "Saving on each window",
                "Each window: the homogeneous and the split fleet on the same requests; the "
                "interval is the mean's (Student t).",
                _png(fig),
            )
        )
        plt.close(fig)

    # 4. GPUs per fleet.
    fig, ax = plt.subplots(figsize=(6, 3.4))
    labels, bottoms = ["homogeneous", "split"], [0.0, 0.0]
    for i, fleet in enumerate(labels):
        for pool in p[fleet]["pools"]:
            ax.bar(i, pool["gpus"], bottom=bottoms[i], label=f"{fleet}: {pool['pool']}")
            bottoms[i] += pool["gpus"]
        need = p[fleet].get("gpus_needed")
        if need and need["half_width"] is not None:
            ax.errorbar(
                i,
                need["mean"],
                yerr=need["half_width"],
                fmt="_",
                color="black",
                capsize=8,
                label="needed, 95% CI" if i == 0 else None,
            )
    ax.set_xticks([0, 1], labels)
    ax.set_ylabel("GPUs")
    ax.legend(fontsize=8)
    out.append(
        (
            "GPUs per fleet",
            "Bars: provisioned GPUs per pool"
            + (
                "; black: the GPUs the windows need (mean and 95% interval)."
                if ver
                else " (estimate)."
            ),
            _png(fig),
        )
    )
    plt.close(fig)

    # 5. Latency distributions (only when simulated).
    samples = {f: p[f].get("samples") for f in ("homogeneous", "split")}
    if all(s and s.get("ttft") for s in samples.values()):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        for ax, metric, slo in (
            (axes[0], "ttft", p["inputs"]["ttft_slo_s"]),
            (axes[1], "tpot", p["inputs"]["tpot_slo_s"]),
        ):
            for fleet, s in samples.items():
                assert s is not None
                v = np.sort(np.asarray(s[metric]))
                ax.plot(v, np.arange(1, v.size + 1) / v.size, label=fleet)
                ci = p[fleet].get(f"{metric}_p99_ci")
                if ci and ci["half_width"] is not None:
                    ax.axvspan(
                        ci["low"], ci["high"], alpha=0.15, color="C0" if fleet[0] == "h" else "C1"
                    )
            ax.axvline(slo, color="red", linestyle="--", label="SLO")
            ax.set_ylim(0.9, 1.0)
            ax.set_xlabel(f"{metric.upper()} (s)")
            ax.set_ylabel("CDF (top 10%)")
            ax.legend(fontsize=8)
        out.append(
            (
                "TTFT and TPOT, homogeneous vs split",
                "The top 10% of the distribution on the first window, both fleets on the same "
                "requests; shaded: the P99's 95% interval over windows.",
                _png(fig),
            )
        )
        plt.close(fig)

    # 6. The workload.
    fig, ax = plt.subplots(figsize=(6, 3.4))
    xs2 = np.sort(mix.budget)
    ax.plot(xs2, np.arange(1, xs2.size + 1) / xs2.size)
    ax.axvline(b, color="red", linestyle="--", label=f"B_short = {b:,} (alpha {p['alpha']:.3f})")
    ax.set_xscale("log")
    ax.set_xlabel("request budget, tokens (prompt + declared output)")
    ax.set_ylabel("CDF")
    ax.legend()
    out.append(("Token-budget CDF", f"{len(mix):,} requests of the workload.", _png(fig)))
    plt.close(fig)
    return out


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1050px;margin:2em auto;padding:0 1em;"
    "color:#222;line-height:1.45}"
    ".rec{border-left:6px solid #2a7;background:#eef8f2;padding:.8em 1em;font-size:1.1em}"
    ".rec.no{border-color:#c83;background:#fbf3ea}"
    ".caveats li{color:#8a4b00}"
    "table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:14px}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}"
    "figure{display:inline-block;margin:.6em;vertical-align:top;max-width:500px}"
    "figure.wide{max-width:1000px}"
    "figcaption{font-size:13px;color:#555}"
)


def write_html(p: dict[str, Any], mix: Mix, directory: str | Path, text: str = "") -> Path:
    """Write DIR/index.html (plots embedded); returns its path.

    `text` (the terminal report) is no longer embedded; kept for callers.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    inp = p["inputs"]
    figs = _figures(p, mix)
    e = html.escape
    ok = p["recommendation"] == "split"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>dualpool plan: "
        f"{e(inp['workload'])}</title><style>{_CSS}</style></head><body>",
        "<h1>Should this fleet split into a short and a long pool?</h1>",
        f"<p>{e(inp['workload'])} ({inp['requests']:,} requests) at {inp['rate']:,.0f} req/s; "
        f"{e(inp['model'])} ({e(inp['weight_dtype'])}) on {e(inp['gpu'])} at "
        f"${inp['price_per_gpu_hour']:.2f}/GPU-hour; SLOs: P99 TTFT &le; {inp['ttft_slo_s']:g} s, "
        f"P99 TPOT &le; {inp['tpot_slo_s'] * 1000:g} ms; B_short {inp['b_short']:,} tokens.</p>",
        f"<p class='rec{'' if ok else ' no'}'><b>{e(headline(p))}</b></p>",
        "<h2>Caveats</h2><ul class='caveats'>",
        *[f"<li>{e(c)}</li>" for c in caveats(p)],
        "</ul>",
        "<h2>Fleets</h2>",
        _table(
            (
                "fleet",
                "pool",
                "config",
                "share",
                "mu req/s",
                "discrete",
                "estimate",
                "needed (95% CI)",
                "provisioned",
                "GPUs",
            ),
            _fleet_rows(p),
        ),
        "<h2>Cost and service</h2>",
        "<p>P99s at the provisioned counts: mean &plusmn; 95% half-width over windows.</p>",
        _table(_SERVICE_COLUMNS, _service_rows(p)),
        "<h2>Why these numbers</h2><ul>",
        *[f"<li>{e(line)}</li>" for line in _explain(p)],
        "</ul>",
        "<h2>Figures</h2>",
    ]
    for title, caption, data in figs:
        wide = " class='wide'" if title.startswith("TTFT") else ""
        parts.append(
            f"<figure{wide}><img class='plot' alt='{e(title)}' "
            f"src='data:image/png;base64,{data}'><figcaption><b>{e(title)}.</b> {e(caption)}"
            "</figcaption></figure>"
        )
    sw = p["sweep"]
    parts += ["<h2>B_short sweep</h2>", _table(_SWEEP_COLUMNS, _sweep_rows(p))]
    if sw["best"]:
        rng = sw["range_80"]
        parts.append(
            f"<p>Best B_short {sw['best']['b_short']:,} ({sw['best']['saving']:.1%}, by the "
            f"{e(sw['basis'].replace('_', ' '))})"
            + (f"; {rng[0]:,} to {rng[1]:,} keep 80% of it." if rng else ".")
            + "</p>"
        )
    if "three_pool" in p:
        tp = p["three_pool"]
        parts.append(
            f"<p>Three pools ({e(' / '.join(x['pool'] for x in tp['pools']))}): estimated "
            f"saving {tp['analytic_saving']:.1%}, against {p['analytic_saving']:.1%} with two.</p>"
        )
    ver = p.get("verification")
    if ver:
        parts += [
            "<h2>How it was verified</h2>",
            _table(
                ("", "value"),
                [
                    ["windows (replications)", str(ver["windows"])],
                    ["distinct requests per window", f"{ver['block_requests']:,}"],
                    *[
                        [
                            f"{k}: requests per run (fleet arrivals, window looped), warm-up",
                            f"{r['run_requests']:,}, {r['warmup_s']:.1f} s",
                        ]
                        for k, r in ver.get("pools", {}).items()
                    ],
                    ["disjoint windows in the workload", str(ver["disjoint_windows"])],
                    ["window offsets (--seed)", ", ".join(f"{o:,}" for o in ver["offsets"])],
                    [
                        "precision asked, reached",
                        f"{ver['precision'] * 100:.1f} points, "
                        f"{(p['saving_ci']['half_width'] or 0) * 100:.1f} points",
                    ],
                    ["simulations", f"{ver['simulations']:,}"],
                ],
            ),
        ]
    parts.append("</body></html>")
    path = d / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
