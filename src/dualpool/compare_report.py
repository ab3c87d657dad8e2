"""How an A/B (`dualpool.compare`) is shown: a side-by-side table, a JSON summary, an HTML page.

The page (`write_report`) is self-contained: the latency CDFs of both arms
(TTFT, TPOT, E2E, modelled seconds) as matplotlib PNGs embedded as base64,
the table, and the planner's prediction beside the measurement.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from dualpool.compare import ARMS, CompareResult, measured_advantage, predicted_advantage

__all__ = ["compare_json", "compare_table", "prediction_lines", "write_report"]


def _ms(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x * 1000:,.0f}"


def _range(r: tuple[float, float]) -> str:
    if not all(math.isfinite(x) for x in r):
        return "[-]"
    return f"[{r[0] * 1000:,.0f}, {r[1] * 1000:,.0f}]"


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def compare_json(res: CompareResult) -> dict[str, Any]:
    s = res.settings
    out: dict[str, Any] = {
        "workload": s.workload,
        "rate": s.rate,
        "model": s.model,
        "gpu": s.gpu,
        "speedup": s.speedup,
        "budget_gpus": res.plan.budget_gpus,
        "planned_instances": res.plan.planned,
        "planner_saving": res.plan.saving,
        "planner_recommendation": res.plan.recommendation,
        "predicted_split_ahead": predicted_advantage(res.plan),
        "measured_split_ahead": measured_advantage(res),
        "alpha": res.plan.alpha,
        "wall_s": round(res.wall_s, 2),
        "stopped": res.stopped,
        "arms": {},
    }
    for arm in ARMS:
        a = res.arms.get(arm)
        pools = res.plan.arms[arm]
        ttft_p, tpot_p = res.plan.predicted(arm)
        (t_lo, t_hi), (p_lo, p_hi) = res.plan.predicted_range(arm)
        entry: dict[str, Any] = {
            "pools": {p.name: {"instances": p.instances, "tp": p.tp} for p in pools},
            "predicted_ttft_p99_s": _finite(ttft_p),
            "predicted_ttft_p99_range_s": [_finite(t_lo), _finite(t_hi)],
            "predicted_tpot_p99_s": _finite(tpot_p),
            "predicted_tpot_p99_range_s": [_finite(p_lo), _finite(p_hi)],
        }
        if a is not None:
            sent = len(a.results)
            good = (a.summary.request_goodput or 0.0) * a.summary.duration
            entry.update(
                {
                    **a.summary.as_vllm(),
                    "errors_by_kind": a.summary.errors_by_kind,
                    "goodput_fraction": good / sent if sent else 0.0,
                    "goodput_fraction_ci90": list(a.goodput_ci),
                    "ttft_p99_ci90_s": [_finite(x) for x in a.ttft_p99_ci],
                    "tpot_p99_ci90_s": [_finite(x) for x in a.tpot_p99_ci],
                    "preemptions": a.preemptions,
                    "rejections": a.rejections,
                    "misroutes": a.misroutes,
                    "per_pool": a.per_pool,
                    "learned_bytes_per_token": a.ratios,
                    "emulator_lag_s": a.emulator_lag_s,
                    "engine_ttft_mean_s": _finite(a.engine_ttft_mean_s),
                    "engine_tpot_mean_s": _finite(a.engine_tpot_mean_s),
                }
            )
        out["arms"][arm] = entry
    return out


def compare_table(res: CompareResult) -> Table:
    s = res.settings
    t = Table(
        title=(
            f"{s.workload} at {s.rate:g} req/s, {s.model} on {s.gpu}: "
            f"{res.plan.budget_gpus} GPUs two ways (modelled time)"
        )
    )
    t.add_column("")
    for arm in ARMS:
        t.add_column(arm, justify="right")
    arms = [res.arms[a] for a in ARMS]

    def row(label: str, *cells: str) -> None:
        t.add_row(label, *cells)

    row(
        "instances",
        *(", ".join(f"{p.name} {p.instances}x TP{p.tp}" for p in res.plan.arms[a]) for a in ARMS),
    )
    row("requests ok / failed", *(f"{a.summary.completed} / {a.summary.failed}" for a in arms))
    row("throughput (req/s)", *(f"{a.summary.request_throughput:.2f}" for a in arms))
    row("output tokens/s", *(f"{a.summary.output_throughput:,.0f}" for a in arms))
    row(
        f"goodput (TTFT<={s.ttft_slo_s:g}s, TPOT<={s.tpot_slo_s * 1000:g}ms)",
        *(
            f"{(a.summary.request_goodput or 0) * a.summary.duration / max(1, len(a.results)):.1%}"
            f" [{a.goodput_ci[0]:.0%}, {a.goodput_ci[1]:.0%}]"
            for a in arms
        ),
    )
    for m, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2el", "E2E")):
        for q in ("p50", "p90", "p99"):
            row(f"{label} {q} (ms)", *(f"{a.summary.metric(m, q):,.0f}" for a in arms))
    row(
        "mean TTFT / TPOT, client (ms)",
        *(f"{a.summary.metric('ttft', 'mean'):,.0f} / {a.summary.metric('tpot', 'mean'):,.0f}"
          for a in arms),
    )  # fmt: skip
    row(
        "mean TTFT / TPOT, engines' own (ms)",
        *(f"{_ms(a.engine_ttft_mean_s)} / {_ms(a.engine_tpot_mean_s)}" for a in arms),
    )
    row("preemptions (emulators)", *(f"{a.preemptions:,.0f}" for a in arms))
    row("rejections (gateway)", *(f"{a.rejections:,.0f}" for a in arms))
    row("misroutes retried (gateway)", *(f"{a.misroutes:,.0f}" for a in arms))
    row(
        "requests per pool",
        *(", ".join(f"{k} {v}" for k, v in sorted(a.per_pool.items())) for a in arms),
    )
    row(
        "learned bytes/token",
        *(", ".join(f"{k} {v:.2f}" for k, v in sorted(a.ratios.items())) or "-" for a in arms),
    )
    row(
        "planner: P99 TTFT / TPOT (ms)",
        *(f"{_ms(res.plan.predicted(a)[0])} / {_ms(res.plan.predicted(a)[1])}" for a in ARMS),
    )
    return t


def prediction_lines(res: CompareResult) -> list[str]:
    """The planner's expectation beside what was measured, in words."""
    s = res.settings
    p = res.plan
    h, sp = res.arms["homogeneous"], res.arms["split"]
    lines = [
        f"Planner (engine model, analytic) for {s.rate:g} req/s: homogeneous needs "
        f"{p.planned['homogeneous']} long instances, the split {p.planned['short']} short + "
        f"{p.planned['long']} long (saving {p.saving:.0%} of GPUs, recommends {p.recommendation}); "
        f"alpha = {p.alpha:.3f}. Both arms get {p.budget_gpus} GPUs here.",
    ]
    for arm in ARMS:
        ttft, tpot = p.predicted(arm)
        (t_lo, t_hi), (p_lo, p_hi) = p.predicted_range(arm)
        a = res.arms[arm]
        meets = math.isfinite(ttft) and ttft <= s.ttft_slo_s and tpot <= s.tpot_slo_s
        lines.append(
            f"{arm}: predicted P99 TTFT {_ms(ttft)} ms {_range((t_lo, t_hi))}, TPOT {_ms(tpot)}"
            f" ms {_range((p_lo, p_hi))} ({'meets' if meets else 'misses'} the SLOs; intervals:"
            f" the rate realized by {len(a.results)} arrivals, 90%); measured P99 TTFT "
            f"{a.summary.metric('ttft', 'p99'):,.0f} ms {_range(a.ttft_p99_ci)}, TPOT "
            f"{a.summary.metric('tpot', 'p99'):,.0f} ms {_range(a.tpot_p99_ci)}, goodput "
            f"{a.goodput_ci[0]:.0%}-{a.goodput_ci[1]:.0%} (90% bootstrap intervals)."
        )
    (ht_lo, ht_hi), _ = p.predicted_range("homogeneous")
    (st_lo, st_hi), _ = p.predicted_range("split")
    pred = p.predicted("split")[0] - p.predicted("homogeneous")[0]
    meas = sp.summary.metric("ttft", "p99") - h.summary.metric("ttft", "p99")
    lines.append(
        f"P99 TTFT, split - homogeneous: predicted {_ms(pred)} ms "
        f"[{_ms(st_lo - ht_hi)}, {_ms(st_hi - ht_lo)}], measured {meas:+,.0f} ms "
        f"[{_ms(sp.ttft_p99_ci[0] - h.ttft_p99_ci[1])}, {_ms(sp.ttft_p99_ci[1] - h.ttft_p99_ci[0])}]."
    )
    hg = (h.summary.request_goodput or 0) * h.summary.duration / max(1, len(h.results))
    sg = (sp.summary.request_goodput or 0) * sp.summary.duration / max(1, len(sp.results))
    lines.append(
        f"Measured goodput difference (split - homogeneous): {sg - hg:+.1%}. "
        + (
            "The planner predicts the split ahead at this budget"
            if predicted_advantage(p)
            else "The planner predicts no advantage for the split at this budget"
        )
        + (
            "; measured: the split ahead (more goodput, lower P99 TTFT)."
            if measured_advantage(res)
            else "; measured: no advantage for the split."
        )
    )
    lag = max(h.emulator_lag_s, sp.emulator_lag_s)
    if lag > 0.5:
        lines.append(
            f"Note: the emulators fell behind by {lag:.1f} s of wall time (the machine was short "
            "of CPU): their timing is distorted; rerun with a lower --speedup."
        )
    return lines


def _cdf_png(res: CompareResult, metric: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.4), dpi=100)
    for arm in ARMS:
        a = res.arms[arm]
        ok = [r for r in a.results if r.success]
        if metric == "ttft":
            xs = [r.ttft_s for r in ok]
        elif metric == "tpot":
            xs = [r.tpot_s for r in ok if r.output_tokens > 1]
        else:
            xs = [r.e2e_s for r in ok]
        if xs:
            v = np.sort(np.asarray(xs))
            ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", label=arm)
    if metric == "ttft":
        ax.axvline(res.settings.ttft_slo_s, color="grey", ls="--", lw=1, label="SLO")
    if metric == "tpot":
        ax.axvline(res.settings.tpot_slo_s, color="grey", ls="--", lw=1, label="SLO")
    ax.set_xscale("log")
    ax.set_xlabel(f"{title}, modelled seconds")
    ax.set_ylabel("fraction of requests")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def write_report(res: CompareResult, directory: str | Path, table_text: str) -> Path:
    """DIR/index.html with the CDFs of both arms; returns its path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>dualpool A/B</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}"
        "figure{display:inline-block;margin:.5em}</style></head><body>",
        "<h1>dualpool A/B: one fleet, two ways</h1>",
        "<ul>",
        *[f"<li>{html.escape(line)}</li>" for line in prediction_lines(res)],
        "</ul>",
    ]
    for metric, title in (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2el", "E2E latency")):
        data = _cdf_png(res, metric, title)
        parts.append(
            f"<figure><img class='plot' alt='{title} CDF' src='data:image/png;base64,{data}'>"
            f"<figcaption>{title}: CDF of both arms</figcaption></figure>"
        )
    parts += ["<h2>Side by side</h2>", f"<pre>{html.escape(table_text)}</pre>", "</body></html>"]
    path = d / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
