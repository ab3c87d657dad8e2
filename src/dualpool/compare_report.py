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

from dualpool.compare import (
    CompareResult,
    measured_advantage,
    measured_diff_ci,
    measured_figures,
    predicted_advantage,
)
from dualpool.compare_plan import ARMS, METRICS

__all__ = ["compare_json", "compare_table", "prediction_lines", "write_report"]


def _ms(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x * 1000:,.0f}"


def _range(r: tuple[float, float]) -> str:
    if not all(math.isfinite(x) for x in r):
        return "[-]"
    return f"[{r[0] * 1000:,.0f}, {r[1] * 1000:,.0f}]"


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _pct(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.1%}"


def _fig(metric: str, x: float) -> str:
    return _pct(x) if metric == "goodput" else f"{_ms(x)} ms"


def _fig_range(metric: str, r: tuple[float, float]) -> str:
    if not all(math.isfinite(x) for x in r):
        return "[-]"
    if metric == "goodput":
        return f"[{r[0]:.1%}, {r[1]:.1%}]"
    return _range(r)


def _diff(metric: str, x: float) -> str:
    if not math.isfinite(x):
        return "-"
    return f"{x * 100:+.1f} points" if metric == "goodput" else f"{x * 1000:+,.0f} ms"


def _diff_range(metric: str, r: tuple[float, float]) -> str:
    if not all(math.isfinite(x) for x in r):
        return "[-]"
    if metric == "goodput":
        return f"[{r[0] * 100:+.1f}, {r[1] * 100:+.1f}]"
    return f"[{r[0] * 1000:+,.0f}, {r[1] * 1000:+,.0f}]"


_LABEL = {"goodput": "goodput", "ttft_p99_s": "P99 TTFT", "tpot_p99_s": "P99 TPOT"}


def compare_json(res: CompareResult) -> dict[str, Any]:
    s = res.settings
    p = res.plan
    pred = p.prediction
    assert pred is not None
    out: dict[str, Any] = {
        "workload": s.workload,
        "rate": s.rate,
        "model": s.model,
        "gpu": s.gpu,
        "speedup": s.speedup,
        "requests": s.requests,
        "budget_gpus": p.budget_gpus,
        "planner": {
            "method": "verified (whole pools simulated on windows of the workload)",
            "instances": p.planned,
            "saving": p.saving,
            "saving_ci95": [_finite(x) for x in p.saving_ci],
            "recommendation": p.recommendation,
            "windows": p.planner_windows,
            "window_requests": p.window_requests,
            "overlapping_windows": p.overlapping,
            "fleet_ttft_p99_s_ci95": {k: list(v) for k, v in p.planner_ttft_p99.items()},
            "elapsed_s": round(p.planner_s, 2),
        },
        # kept for readers of the earlier format
        "planned_instances": p.planned,
        "planner_saving": p.saving,
        "planner_recommendation": p.recommendation,
        "predicted_split_ahead": predicted_advantage(p),
        "measured_split_ahead": measured_advantage(res),
        "alpha": p.alpha,
        "prediction": {
            "method": "simulator, both arms from empty on the replayed requests; interval: "
            f"{pred.confidence:.0%} prediction interval of a replay over {pred.windows} "
            "disjoint windows",
            "windows": pred.windows,
            "elapsed_s": round(pred.elapsed_s, 2),
        },
        "difference": {},
        "wall_s": round(res.wall_s, 2),
        "stopped": res.stopped,
        "arms": {},
    }
    for m in METRICS:
        out["difference"][m] = {
            "predicted": _finite(pred.diff(m)),
            "predicted_range90": [_finite(x) for x in pred.diff_range(m)],
            "measured": (
                _finite(
                    measured_figures(res, "split").get(m)
                    - measured_figures(res, "homogeneous").get(m)
                )
                if res.arms
                else None
            ),
            "measured_ci90": [_finite(x) for x in measured_diff_ci(res, m, s.seed)]
            if res.arms
            else None,
        }
    for arm in ARMS:
        a = res.arms.get(arm)
        pools = p.arms[arm]
        pt = pred.point(arm)
        entry: dict[str, Any] = {
            "pools": {x.name: {"instances": x.instances, "tp": x.tp} for x in pools},
            "gpus": p.gpus(arm),
            "predicted_goodput_fraction": pt.goodput,
            "predicted_goodput_range90": [_finite(x) for x in pred.range(arm, "goodput")],
            "predicted_ttft_p99_s": _finite(pt.ttft_p99_s),
            "predicted_ttft_p99_range_s": [_finite(x) for x in pred.range(arm, "ttft_p99_s")],
            "predicted_tpot_p99_s": _finite(pt.tpot_p99_s),
            "predicted_tpot_p99_range_s": [_finite(x) for x in pred.range(arm, "tpot_p99_s")],
            "predicted_preemptions": pt.preemptions,
            "predicted_spillovers": pt.spilled,
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
                    "spillovers": a.spillovers,
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
    pred = res.plan.prediction
    assert pred is not None
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
        f"goodput (TTFT<={s.ttft_slo_s:g}s, TPOT<={s.tpot_slo_s * 1000:g}ms) [90%]",
        *(
            f"{(a.summary.request_goodput or 0) * a.summary.duration / max(1, len(a.results)):.1%}"
            f" [{a.goodput_ci[0]:.0%}, {a.goodput_ci[1]:.0%}]"
            for a in arms
        ),
    )
    row(
        "  predicted (simulator) [90%]",
        *(f"{pred.point(a).goodput:.1%} {_fig_range('goodput', pred.range(a, 'goodput'))}"
          for a in ARMS),
    )  # fmt: skip
    for m, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2el", "E2E")):
        for q in ("p50", "p90", "p99"):
            row(f"{label} {q} (ms)", *(f"{a.summary.metric(m, q):,.0f}" for a in arms))
        if m in ("ttft", "tpot"):
            key = f"{m}_p99_s"
            row(
                f"  {label} p99 measured [90%]",
                *(_range(a.ttft_p99_ci if m == "ttft" else a.tpot_p99_ci) for a in arms),
            )
            row(
                f"  {label} p99 predicted [90%]",
                *(f"{_ms(pred.point(a).get(key))} {_range(pred.range(a, key))}" for a in ARMS),
            )
    row(
        "mean TTFT / TPOT, client (ms)",
        *(f"{a.summary.metric('ttft', 'mean'):,.0f} / {a.summary.metric('tpot', 'mean'):,.0f}"
          for a in arms),
    )  # fmt: skip
    row(
        "mean TTFT / TPOT, engines' own (ms)",
        *(f"{_ms(a.engine_ttft_mean_s)} / {_ms(a.engine_tpot_mean_s)}" for a in arms),
    )
    row(
        "preemptions, emulators (predicted)",
        *(
            f"{a.preemptions:,.0f} ({pred.point(n).preemptions:,})"
            for a, n in zip(arms, ARMS, strict=True)
        ),
    )
    row(
        "spillovers, gateway (predicted)",
        *(
            f"{a.spillovers:,.0f} ({pred.point(n).spilled:,})"
            for a, n in zip(arms, ARMS, strict=True)
        ),
    )
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
    return t


def prediction_lines(res: CompareResult) -> list[str]:
    """The planner's sizing, the prediction beside what was measured, in words."""
    s = res.settings
    p = res.plan
    pred = p.prediction
    assert pred is not None
    lo, hi = p.saving_ci
    lines = [
        f"Planner (verified: whole pools simulated on {p.planner_windows} "
        f"{'overlapping' if p.overlapping else 'disjoint'} windows of {p.window_requests} "
        f"requests, {p.planner_s:.0f} s) for {s.rate:g} req/s: homogeneous needs "
        f"{p.planned['homogeneous']} long instances, the split {p.planned['short']} short + "
        f"{p.planned['long']} long; saving {p.saving:.0%} of GPUs, 95% interval "
        f"[{lo:.0%}, {hi:.0%}]"
        + (" (too narrow: the windows overlap)" if p.overlapping else "")
        + f"; recommends {p.recommendation}; alpha = {p.alpha:.3f}. Both arms get "
        f"{p.budget_gpus} GPUs here: the smaller planned fleet.",
        f"Prediction: the simulator runs both arms from empty on the {s.requests} requests "
        f"replayed (and on {pred.windows - 1} other disjoint windows of as many requests, "
        f"for the {pred.confidence:.0%} interval of a replay); measured: 90% bootstrap "
        "intervals over the replayed requests.",
    ]
    for arm in ARMS:
        pt = pred.point(arm)
        mf = measured_figures(res, arm)
        a = res.arms[arm]
        parts = []
        for m in METRICS:
            mci = (
                a.goodput_ci
                if m == "goodput"
                else (a.ttft_p99_ci if m == "ttft_p99_s" else a.tpot_p99_ci)
            )
            parts.append(
                f"{_LABEL[m]} {_fig(m, pt.get(m))} {_fig_range(m, pred.range(arm, m))} "
                f"predicted, {_fig(m, mf.get(m))} {_fig_range(m, mci)} measured"
            )
        lines.append(f"{arm}: " + "; ".join(parts) + ".")
    diffs = []
    for m in ("goodput", "ttft_p99_s"):
        meas = measured_figures(res, "split").get(m) - measured_figures(res, "homogeneous").get(m)
        diffs.append(
            f"{_LABEL[m]} {_diff(m, pred.diff(m))} {_diff_range(m, pred.diff_range(m))} "
            f"predicted, {_diff(m, meas)} {_diff_range(m, measured_diff_ci(res, m, s.seed))} "
            "measured"
        )
    lines.append("Split - homogeneous: " + "; ".join(diffs) + ".")
    lines.append(
        (
            "Predicted: the split ahead at this budget (more requests within both SLOs and "
            "a lower P99 TTFT)"
            if predicted_advantage(p)
            else "Predicted: no advantage for the split at this budget"
        )
        + (
            "; measured: the split ahead (more goodput, lower P99 TTFT)."
            if measured_advantage(res)
            else "; measured: no advantage for the split."
        )
    )
    h, sp = res.arms["homogeneous"], res.arms["split"]
    for arm, a in (("homogeneous", h), ("split", sp)):
        # What the client saw beyond what the engines did: delivery through the
        # gateway and the client, in wall time x speedup (CPU contention shows here).
        extra = a.summary.metric("ttft", "mean") / 1000 - a.engine_ttft_mean_s
        if math.isfinite(extra) and extra > max(0.1, 0.2 * a.engine_ttft_mean_s):
            lines.append(
                f"Note: {arm}: the client's mean TTFT is {extra * 1000:,.0f} ms (modelled) above "
                "the engines' own: delivery delays (gateway, client, CPU contention) times the "
                "speedup; the measurement is distorted, rerun with a lower --speedup."
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
