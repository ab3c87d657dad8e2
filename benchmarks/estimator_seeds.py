"""The estimator's accuracy targets across seeds, with intervals, and its margin's trade-off.

Usage: python benchmarks/estimator_seeds.py [--seeds 0-4] [--quick] [--tokenizers llama3,qwen]
                                            [--cache DIR]

For each seed s, what `estimator_accuracy.py --seed s` measures, with one
change: the calibration part shuffles the corpus with seeds 10s .. 10s+9
(disjoint between seeds; `--seed s` uses s .. s+9, so seed 0 is the same run).
The misroute part is exactly `estimator_accuracy.py --seed s`'s: the warm-up
shuffled by s, the 20,000-request hard set drawn with s+1.

Reported per tokenizer and metric: each seed's value, the mean and a 95%
interval of the mean (Student t over the seeds), and how many seeds meet the
target. A misroute rate of 0.2% of 20,000 is 40 requests: the binomial noise
alone is ~0.03 points on the unsafe rate and ~0.14 on the wasted rate (2% of
~10,000 truly short requests), so one seed does not settle a target.

The same pass also sweeps the routing margin without re-running (the margin
does not change what is learned, only the decision): for each request that
took the linear model, its estimate without the margin and its spread are
recorded, and the decision is replayed (a) with the margin read as each
category's `q` quantile of its standardised errors at that moment
(`linear_quantile`), for q on a grid, and (b) with one `gamma` x sd for all
(`linear_gamma`). Requests the ratio served keep their decision.

`--cache DIR` keeps each hard set's true budgets (the slow part: tokenizing
20,000 prompts of ~8K tokens) in DIR, keyed by tokenizer, seed and size, so
two source trees (`PYTHONPATH`) are compared on the same requests cheaply.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import math
import random
import statistics
import sys
from pathlib import Path
from typing import Any

import estimator_accuracy as acc
from _common import emit, require_data
from dualpool.budget.calibrator import Calibrator, linear_tokens
from dualpool.policy import PoolSpec
from dualpool.router import Router
from dualpool.tokenizers import load_tokenizer

TARGETS = {
    "median_rel_error": 0.04,
    "p95_rel_error": 0.15,
    "unsafe_misroute_rate": 0.002,
    "wasted_rate": 0.02,
}
LEVELS = [round(0.70 + 0.01 * i, 2) for i in range(21)]  # 0.70 .. 0.90
GAMMAS = [round(0.4 + 0.05 * i, 2) for i in range(13)]  # 0.40 .. 1.00
# Student t, 97.5% point, by degrees of freedom (the 95% interval of a mean).
_T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def interval(values: list[float]) -> dict[str, Any]:
    n = len(values)
    mean = statistics.fmean(values)
    half = _T975.get(n - 1, 1.96) * statistics.stdev(values) / math.sqrt(n) if n > 1 else math.nan
    return {
        "mean": round(mean, 5),
        "ci95": [round(mean - half, 5), round(mean + half, 5)],
        "per_seed": [round(v, 5) for v in values],
    }


def hard_set(
    rows: list[dict[str, Any]], n: int, seed: int, tok: Any, name: str, cache: Path | None
) -> list[tuple[dict[str, Any], int, str]]:
    """`estimator_accuracy.build_requests`, its true budgets cached by (tokenizer, seed, n)."""
    if cache is None:
        return acc.build_requests(rows, n, random.Random(seed + 1), tok)
    path = cache / f"hardset-{name}-{seed}-{n}.json"

    if path.exists():
        saved = json.loads(path.read_text())
        reqs = _replay(rows, n, seed, saved["prompt_tokens"])
        digest = hashlib.sha256("".join(b["messages"][0]["content"] for b, _, _ in reqs).encode())
        if digest.hexdigest() == saved["texts_sha256"]:
            return reqs
    reqs = acc.build_requests(rows, n, random.Random(seed + 1), tok)
    digest = hashlib.sha256("".join(b["messages"][0]["content"] for b, _, _ in reqs).encode())
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "texts_sha256": digest.hexdigest(),
                "prompt_tokens": [t - b["max_tokens"] for b, t, _ in reqs],
            }
        )
    )
    return reqs


def _replay(
    rows: list[dict[str, Any]], n: int, seed: int, prompt_tokens: list[int]
) -> list[tuple[dict[str, Any], int, str]]:
    """The same requests as `build_requests`, their prompt counts taken from a list."""
    counts = iter(prompt_tokens)
    original = acc.chat_prompt_tokens
    acc.chat_prompt_tokens = lambda _tok, _messages: next(counts)  # type: ignore[assignment]
    try:
        return acc.build_requests(rows, n, random.Random(seed + 1), None)
    finally:
        acc.chat_prompt_tokens = original


def misroutes(
    rows: list[dict[str, Any]],
    reqs: list[tuple[dict[str, Any], int, str]],
    seed: int,
    tok: Any,
    dump: Any = None,
) -> dict[str, Any]:
    """`estimator_accuracy.misroutes`, recording what replays the decision under other margins."""
    router = Router([PoolSpec("short", 8192), PoolSpec("long", 65536)], acc.CONFIG)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    for i in order:
        routed = router.route(acc.body_of(rows[i]["text"]))
        truth = acc.chat_prompt_tokens(tok, acc.body_of(rows[i]["text"])["messages"])
        router.observe(routed, {"prompt_tokens": truth})
    cal: Calibrator = router.estimator.calibrator
    has_margin = hasattr(cal.config, "linear_quantile")
    n = len(reqs)
    n_short = sum(1 for _, t, _ in reqs if t <= acc.B_SHORT)
    unsafe = wasted = mismatch = 0
    # Per request, for the replay: (short?, fixed decision or None, base, sd, margins by
    # level, the margin it was routed with)
    replay: list[tuple[bool, bool | None, float, float, list[float], float]] = []
    per_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for body, true_total, kind in reqs:
        routed = router.route(body)
        f, est = routed.features, routed.estimate
        short = true_total <= acc.B_SHORT
        sent_short = routed.decision.pool == 0
        unsafe += sent_short and not short
        wasted += (not sent_short) and short
        k = per_kind[kind]
        k["n"] += 1
        k["short"] += short
        k["unsafe"] += sent_short and not short
        k["wasted"] += (not sent_short) and short
        coef = cal.coefficients(f.model, f.content_class)
        if f.shaped and coef.theta is not None:
            p = linear_tokens(coef.theta, f, coef.point)
            sd = math.sqrt(coef.lin_v * p + coef.lin_rho2 * p * p)
            a, m = cal.overhead(f.model)
            base = a + m * f.num_messages + p
            # main before the learned margin has no per-category one: linear_gamma for all
            used = getattr(coef, "lin_gamma", cal.config.linear_gamma)
            mismatch += max(1, math.ceil(base + used * sd)) != est.prompt_tokens
            margins: list[float] = []
            if has_margin:
                cat = cal._cats[f.model][f.content_class]
                enough = cat.linear.zn >= cal.config.linear_margin_samples
                margins = [
                    cat.linear.margin(q) if enough else cal.config.linear_gamma for q in LEVELS
                ]
            replay.append((short, None, base + est.output_tokens, sd, margins, used))
            if dump is not None:
                record = {
                    "kind": kind,
                    "class": f.content_class,
                    "shape": f.shape_vector(),
                    "p": p,
                    "base": base,
                    "sd": sd,
                    "output": est.output_tokens,
                    "prompt": true_total - body["max_tokens"],
                    "margin": used,
                }
                dump.write(json.dumps(record) + "\n")
        else:
            replay.append((short, sent_short, 0.0, 0.0, [], 0.0))
        router.observe(routed, {"prompt_tokens": true_total - body["max_tokens"]})

    def rates(decide: Any) -> dict[str, float]:
        u = w = 0
        for short, fixed, base, sd, margins, used in replay:
            s = fixed if fixed is not None else max(1.0, math.ceil(decide(base, sd, margins, used)))
            s = s is True or (s is not False and s <= acc.B_SHORT)
            u += s and not short
            w += (not s) and short
        return {"unsafe": round(u / n, 5), "wasted": round(w / max(1, n_short), 5)}

    def by_level(j: int) -> Any:
        return lambda base, sd, margins, _used: base + margins[j] * sd

    def by_gamma(g: float) -> Any:
        return lambda base, sd, _margins, _used: base + g * sd

    return {
        "requests": n,
        "unsafe_misroute_rate": round(unsafe / n, 5),
        "wasted_rate": round(wasted / max(1, n_short), 5),
        "per_kind": {
            kind: {
                "unsafe": round(c["unsafe"] / c["n"], 5),
                "wasted": round(c["wasted"] / max(1, c["short"]), 5),
            }
            for kind, c in sorted(per_kind.items())
        },
        "linear_share": round(sum(1 for r in replay if r[1] is None) / n, 4),
        "replay_mismatches": mismatch,
        # the replay with the margins the requests were routed with: the run's own rates
        "replay_check": rates(lambda base, sd, _margins, used: base + used * sd),
        "sweep_quantile": {str(q): rates(by_level(j)) for j, q in enumerate(LEVELS)}
        if has_margin
        else {},
        "sweep_gamma": {str(g): rates(by_gamma(g)) for g in GAMMAS},
        "floor": acc.misroute_floor(router, reqs),
    }


def mean_sweep(per_seed: list[dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    """A margin sweep's rates, averaged over the seeds."""
    sweeps = [r["misroutes"][key] for r in per_seed]
    if not sweeps[0]:
        return {}
    return {
        lvl: {
            m: round(statistics.fmean(s[lvl][m] for s in sweeps), 5) for m in ("unsafe", "wasted")
        }
        for lvl in sweeps[0]
    }


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0-4", help="a range (0-4) or a list (0,5,7)")
    ap.add_argument("--quick", action="store_true", help="2 shuffles, 2,000 requests per seed")
    ap.add_argument("--tokenizers", default="llama3,qwen", help="comma-separated")
    ap.add_argument("--cache", type=Path, default=None, help="keep hard sets' true budgets here")
    ap.add_argument("--dump", type=Path, default=None, help="write each linear-model route here")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an EstimatorConfig field for this run (JSON value), e.g. linear_quantile=0.8",
    )
    args = ap.parse_args()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    if overrides:
        acc.CONFIG = dataclasses.replace(acc.CONFIG, **overrides)
    seeds = parse_seeds(args.seeds)
    path = require_data("text/prompts.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    n = 2000 if args.quick else 20000
    shuffles = 2 if args.quick else 10
    out: dict[str, Any] = {}
    for name in args.tokenizers.split(","):
        tok = load_tokenizer(name)
        per_seed: list[dict[str, Any]] = []
        for seed in seeds:
            cal = acc.calibration(rows, [10 * seed + i for i in range(shuffles)], tok)
            reqs = hard_set(rows, n, seed, tok, name, args.cache)
            if args.dump is not None:
                with open(args.dump.with_suffix(f".{name}.{seed}.jsonl"), "w") as dump:
                    mis = misroutes(rows, reqs, seed, tok, dump)
            else:
                mis = misroutes(rows, reqs, seed, tok)
            row = {"seed": seed, "calibration": cal, "misroutes": mis}
            print(json.dumps({"tokenizer": name, **row}), file=sys.stderr, flush=True)
            per_seed.append(row)
        metrics = {
            "median_rel_error": [r["calibration"]["median_rel_error"] for r in per_seed],
            "p95_rel_error": [r["calibration"]["p95_rel_error"] for r in per_seed],
            "unsafe_misroute_rate": [r["misroutes"]["unsafe_misroute_rate"] for r in per_seed],
            "wasted_rate": [r["misroutes"]["wasted_rate"] for r in per_seed],
        }
        summary = {
            k: {**interval(v), "seeds_meeting": sum(1 for x in v if x <= TARGETS[k])}
            for k, v in metrics.items()
        }

        out[name] = {
            **summary,
            "sweep_quantile_mean": mean_sweep(per_seed, "sweep_quantile"),
            "sweep_gamma_mean": mean_sweep(per_seed, "sweep_gamma"),
            "floor_wasted_mean": round(
                statistics.fmean(
                    r["misroutes"]["floor"]["least_wasted_rate_at_unsafe_0.2pct"] for r in per_seed
                ),
                5,
            ),
            "replay_mismatches": sum(r["misroutes"]["replay_mismatches"] for r in per_seed),
        }
    emit(
        {"seeds": seeds, "quick": args.quick, "requests": n, "config": overrides, "tokenizers": out}
    )


if __name__ == "__main__":
    main()
