"""How much KV cache did vLLM really use in a measured run? Evidence from its stamps.

    .venv/bin/python benchmarks/kv_evidence.py [--run NAME] [--runs DIR]
        [--shared-prefix I:J:TOKENS ...]

For a KV-bound run of shared/data/vllm-runs (default the RTX 4090 run), from
the per-request stamps and the per-second timeseries alone:

1. Who kept running. vLLM v1 preempts the most recently admitted running
   request, so the oldest run on: the requests' TPOT in admission order
   shows where preemption starts (`never_preempted`: the leading requests
   whose TPOT stays within 15% of the first ten's median).
2. The blocks the running set held. Each second of the KV-bound phase
   (from the first second the running count falls while requests wait, to
   the first completion), the oldest R unfinished requests (R = vLLM's
   logged running count) hold ceil((prompt + generated) / block) blocks,
   generated = 1 + (t - first token) / own TPOT. Compared with the KV
   capacity the README logs. With `--shared-prefix I:J:TOKENS` (requests
   by arrival order, 0-based: J's prompt begins with TOKENS tokens of I's),
   the full blocks of that prefix count once while both run, as vLLM's
   prefix cache holds them (block i's hash chains block i-1's, so only
   whole 16-token blocks of an identical prefix are shared). The pairs come
   from the run's token ids, which are not in the run folder; for the
   RTX 4090 run they are `40:47:455` (docs/engine-model.md §7).
3. The prefix-cache hits the admission burst allows. The scheduled and
   first-token stamps fall on engine-step boundaries. In the saturated span
   (the longest run of gaps that are whole numbers of the full-step
   duration, while requests wait) every step computes
   `max_num_batched_tokens` tokens, so the prefill computed there is
   steps x budget - decode rows. The prompts prefilled inside the span,
   plus those straddling its ends, minus that, bound the tokens the
   prefix cache served (one step of uncertainty either way).
4. The model's running trajectory over that phase with the logged capacity
   and with the capacity the running set held (the median of 2.).

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from _common import emit, shared_data_dir
from dualpool.engine import Catalog
from dualpool.engine.measured import (
    engine_config,
    find_runs,
    kv_held_blocks,
    kv_held_capacity,
    kv_running_sets,
    replay,
    resolve_specs,
)


def _load(runs_dir: Path, name: str) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    reqs = [json.loads(line) for line in (runs_dir / f"{name}_requests.jsonl").open()]
    with (runs_dir / f"{name}_timeseries.csv").open() as f:
        ts = list(csv.DictReader(f))
    return reqs, ts


def _pairs(specs: list[str]) -> list[tuple[int, int, int]]:
    """`I:J:TOKENS` -> (earlier, later, tokens); SystemExit(2) naming the flag."""
    out: list[tuple[int, int, int]] = []
    for spec in specs:
        try:
            i, j, n = (int(x) for x in spec.split(":"))
        except ValueError:
            i = j = n = -1
        if min(i, j, n) < 0 or i == j:
            print(f"kv_evidence: error: --shared-prefix {spec!r}: expected I:J:TOKENS "
                  "(two different request indices, a token count)", file=sys.stderr)  # fmt: skip
            raise SystemExit(2)
        out.append((min(i, j), max(i, j), n))
    return out


def _shared_blocks(members: tuple[int, ...], pairs: list[tuple[int, int, int]], bs: int) -> int:
    """Full blocks the running set holds once for two or more of its requests: each
    later request of a pair reuses the prefix blocks of an earlier one that runs."""
    running = set(members)
    reuse: dict[int, int] = {}
    for i, j, n in pairs:
        if i in running and j in running:
            reuse[j] = max(reuse.get(j, 0), n // bs)
    return sum(reuse.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="rtx4090_llama31_8b_seqs128")
    ap.add_argument("--runs", default=None, help="folder of measured runs")
    ap.add_argument("--shared-prefix", action="append", default=[], metavar="I:J:TOKENS",
                    help="requests I and J (arrival order) share a TOKENS-token prompt prefix")  # fmt: skip
    args = ap.parse_args()
    pairs = _pairs(args.shared_prefix)
    runs_dir = Path(args.runs) if args.runs else shared_data_dir() / "vllm-runs"
    try:
        reqs, ts = _load(runs_dir, args.run)
    except OSError as e:
        print(f"kv_evidence: error: {e}", file=sys.stderr)
        return 2
    run = next(r for r in find_runs(runs_dir) if r.name == args.run)
    model, gpu = resolve_specs(run, Catalog())
    cfg = engine_config(run, model)
    bs, budget = cfg.block_size, cfg.max_num_batched_tokens
    logged = run.num_gpu_blocks
    t0 = min(r["queued_ts"] for r in reqs)
    for r in reqs:
        r["tpot"] = (r["last_token_ts"] - r["first_token_ts"]) / max(1, r["output_toks"] - 1)
    order = sorted(reqs, key=lambda r: r["scheduled_ts"])

    # 1. who kept running
    ref = statistics.median(r["tpot"] for r in order[:10])
    never = next((i for i, r in enumerate(order) if r["tpot"] > 1.15 * ref), len(order))
    print(f"{args.run}: TPOT of the first requests by admission (ms): "
          + " ".join(f"{r['tpot'] * 1000:.0f}" for r in order[:50]))  # fmt: skip
    print(f"  the first {never} by admission keep a steady TPOT (never preempted)")

    # 2. blocks held by the oldest R each second of the KV-bound phase (the
    # engine's kv_held_blocks: `dualpool calibrate` starts its capacity fit there)
    rows = [(float(x["t"]), int(x["running"]), int(x["waiting"])) for x in ts]
    start = next(
        (t for (t, r, w), (_, r0, _) in zip(rows[1:], rows, strict=False) if r < r0 and w > 0),
        None,
    )
    held = kv_held_blocks(run, bs)
    shared = [_shared_blocks(m, pairs, bs) for _, _, m in kv_running_sets(run)]
    for (t, running, blocks), s in zip(held, shared, strict=True):
        net = f" ({s:,} of them shared by prefix: {blocks - s:,} distinct)" if pairs else ""
        print(
            f"  t={t:4.0f}s running {running:3d}: the oldest {running} hold {blocks:,} blocks{net}"
        )

    # 3. prefix hits the admission burst allows
    burst = [r for r in order if r["first_token_ts"] - t0 < (start or 0) + 1.0]
    stamps = sorted(
        x - t0 for r in burst for x in (r["scheduled_ts"], r["first_token_ts"])
    )  # fmt: skip
    bounds: list[float] = []
    for x in stamps:
        if not bounds or x - bounds[-1] > 0.003:
            bounds.append(x)
    gaps = [b - a for a, b in itertools.pairwise(bounds)]
    full = statistics.median(g for g in gaps if g > 0.1) if any(g > 0.1 for g in gaps) else 0.0
    hit: dict[str, Any] = {}
    if full:
        # The saturated span: the longest run of consecutive gaps that are whole
        # numbers of full steps (requests wait, so every step fills the budget).
        whole = [round(g / full) >= 1 and abs(g - round(g / full) * full) < 0.08 * full
                 for g in gaps]  # fmt: skip
        best, i0, i1 = 0, 0, -1
        k = 0
        while k < len(whole):
            j = k
            while whole[k] and j + 1 < len(whole) and whole[j + 1]:
                j += 1
            if whole[k] and j - k + 1 > best:
                best, i0, i1 = j - k + 1, k, j
            k = j + 1
        a, b = bounds[i0], bounds[i1 + 1]
        steps = 0
        decode_rows = 0
        for start_g, g in zip(bounds[i0 : i1 + 1], gaps[i0 : i1 + 1], strict=True):
            n = round(g / full)
            steps += n
            mid = start_g + g / 2
            decode_rows += n * sum(
                1 for r in reqs if r["first_token_ts"] - t0 < mid < r["last_token_ts"] - t0
            )
        computed = steps * budget - decode_rows

        def rel(r: dict[str, Any], key: str) -> float:
            return float(r[key]) - t0

        inside = sum(r["input_toks"] for r in reqs
                     if a <= rel(r, "scheduled_ts") and rel(r, "first_token_ts") <= b)  # fmt: skip
        # requests whose prefill straddles an end of the span (part of it inside)
        straddle = sum(r["input_toks"] for r in reqs
                       if rel(r, "scheduled_ts") < b and rel(r, "first_token_ts") > a
                       and not (a <= rel(r, "scheduled_ts") and rel(r, "first_token_ts") <= b))  # fmt: skip
        hit = {
            "span_s": [round(a, 3), round(b, 3)],
            "full_step_s": full,
            "full_steps": steps,
            "decode_rows": decode_rows,
            "prefill_computed": computed,
            "prompt_tokens_inside": inside,
            "prompt_tokens_straddling": straddle,
            "hit_tokens_at_least": inside - computed,
            "hit_tokens_at_most": inside + straddle - computed,
        }
        print(
            f"  saturated span {a:.2f}-{b:.2f} s: {steps} full steps of {full * 1000:.0f} ms "
            f"= {computed:,} prefill tokens computed (after {decode_rows} decode rows); "
            f"prompts prefilled entirely inside: {inside:,} tokens, straddling its ends: "
            f"{straddle:,}; so the prefix cache served between {inside - computed:,} and "
            f"{inside + straddle - computed:,} tokens of them (one step more or less: "
            f"+- {budget:,})"
        )

    # A large prefix hit shortens a prefill below the GPU's solo rate (the first
    # request's, alone on the engine): count the requests that prefilled faster
    # than 60% of the time a full computation at that rate takes.
    first = order[0]
    solo = first["input_toks"] / (first["first_token_ts"] - first["scheduled_ts"])
    fast = [r["request_id"] for r in reqs
            if r["first_token_ts"] - r["scheduled_ts"] < 0.6 * r["input_toks"] / solo]  # fmt: skip
    hit["solo_prefill_tokens_per_s"] = solo
    hit["requests_prefilled_faster_than_60pct_of_solo"] = len(fast)
    print(
        f"  solo prefill rate {solo:,.0f} tokens/s ({first['request_id']}); requests that "
        f"prefilled in under 60% of the time it implies: {len(fast)}"
    )

    # 4. the model's trajectory over the phase, at the logged capacity and at the held one
    out: dict[str, Any] = {
        "run": args.run,
        "logged_blocks": logged,
        "never_preempted": never,
        "held": [
            {"t": t, "running": r, "blocks": b, "shared_prefix_blocks": s}
            for (t, r, b), s in zip(held, shared, strict=True)
        ],
        "shared_prefix_pairs": [list(p) for p in pairs],
        "prefix_hits": hit,
    }
    if held and logged:
        cap = kv_held_capacity(run, bs) or logged
        out["held_median_blocks"] = cap
        out["held_over_logged"] = cap / logged - 1.0
        if pairs:
            net = statistics.median(b - s for (_, _, b), s in zip(held, shared, strict=True))
            out["held_net_of_shared_median_blocks"] = net
            out["held_net_of_shared_over_logged"] = net / logged - 1.0
            print(f"  net of the shared prefix blocks the running set held {net:,.0f} blocks "
                  f"(median), {net / logged - 1.0:+.1%} over the logged {logged:,}")  # fmt: skip
        meas = {t: r for t, r, _ in held}
        for label, blocks in (("logged", logged), ("held", cap)):
            res = replay(run, model, gpu, cfg, num_gpu_blocks=blocks)
            mod = {round(t): r for t, r, _ in res.timeseries}
            pairs = [(mod.get(round(t)), r) for t, r in meas.items()]
            mae = statistics.mean(abs(m - r) for m, r in pairs if m is not None)
            out[f"running_mae_{label}"] = mae
            print(
                f"  model with {blocks:,} blocks ({label}): running "
                + " ".join(str(m) for m, _ in pairs)
                + "; vLLM "
                + " ".join(str(r) for _, r in pairs)
                + f"; MAE {mae:.1f}"
            )
    emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
