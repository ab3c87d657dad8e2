"""`dualpool calibrate RUN`: fit the engine model to a measured vLLM run.

RUN is either a run of the per-request format of shared/data/vllm-runs
(NAME_meta.json + NAME_requests.jsonl; pass either file or the NAME prefix)
or the result JSON of `vllm bench serve --save-result --save-detailed`
(its model, GPU and engine arguments come from --model/--gpu and the
engine flags). The run is replayed through the engine model (its arrivals,
token counts and engine arguments) and flops/bandwidth efficiency and the
step overheads are fitted to its P50/P90 TTFT, E2E and TPOT. When the run
is KV-bound (the replay preempts, or its timeseries shows vLLM's running
count falling while requests wait) the KV capacity is fitted too, as the
machine's non-torch memory (the residue vLLM measures at start-up), starting
from the capacity the run's own stamps show; the output compares the
capacity it implies with vLLM's logged figure.

Writes the `step_params:` (and `memory_params:`) YAML fragment (stdout, or
--out FILE) that `dualpool simulate`, `plan` and `emulate` read with
--step-params FILE (and that a fleet YAML accepts as its step_params: and
memory_params: keys). The fit's error on the
run, and with --holdout FILE on another run of the same GPU, goes to stderr.
--split fits on the first half of the run's requests and reports the second
half as the holdout (one replay of the whole run, so the second half still
queues behind the first).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dualpool.cli.common import add_catalog_args, catalog_from_args, print_json
from dualpool.engine.measured import (
    FitResult,
    MeasuredRun,
    ReplayResult,
    compare,
    engine_config,
    fit_step_params,
    load_bench_json,
    load_run,
    memory_params_yaml,
    replay,
    resolve_specs,
    step_params_yaml,
    trajectory_error,
)
from dualpool.engine.memory import DEFAULT_NON_TORCH_BYTES, GiB, resolved_non_torch_bytes
from dualpool.errors import ConfigError

FITTED = ("flops_efficiency", "bandwidth_efficiency", "step_overhead_s", "per_seq_overhead_s")
KEYS = ("ttft_p50", "ttft_p90", "e2e_p50", "e2e_p90", "tpot_p50", "tpot_p90")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "calibrate",
        help="fit the engine model's step-time parameters to a measured vLLM run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="NAME_meta.json / NAME_requests.jsonl, or a vllm bench JSON")
    p.add_argument(
        "--holdout", default=None, metavar="FILE", help="another run to check the fit on"
    )
    p.add_argument(
        "--split", action="store_true", help="fit on the first half, check on the second"
    )
    p.add_argument("--out", default=None, metavar="FILE", help="write the YAML here (else stdout)")
    p.add_argument("--model", default=None, help="catalog model (default: from the run)")
    p.add_argument("--gpu", default=None, help="catalog GPU (default: from the run's meta or name)")
    p.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=None,
        help="vLLM --tensor-parallel-size of the run (default: from its meta.json)",
    )
    p.add_argument(
        "--max-num-seqs",
        type=int,
        default=None,
        help="vLLM --max-num-seqs of the run (default: from its meta.json)",
    )
    p.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=None,
        help="vLLM --max-num-batched-tokens of the run (default: from its meta.json)",
    )
    p.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="vLLM --max-model-len of the run (default: from its meta.json)",
    )
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=None,
        help="vLLM --gpu-memory-utilization of the run (default: from its meta.json)",
    )
    p.add_argument(
        "--request-rate",
        type=float,
        default=None,
        help="bench JSON without start_times: arrivals spaced at this rate (default: its rate)",
    )
    p.add_argument("--max-replays", type=int, default=160, help="fit budget (default 160)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_catalog_args(p, step_params=False)
    p.set_defaults(func=run)


def _load(path: str, rate: float | None) -> MeasuredRun:
    p = Path(path)
    if p.suffix == ".json" and not p.name.endswith("_meta.json"):
        try:
            head = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError("run", f"cannot read {p}: {e}") from None
        if isinstance(head, dict) and "ttfts" in head:
            return load_bench_json(p, rate)
    return load_run(p)


def _with_flags(run: MeasuredRun, args: argparse.Namespace) -> MeasuredRun:
    kw = dict(run.engine_kwargs)
    for flag in (
        "tensor_parallel_size",
        "max_num_seqs",
        "max_num_batched_tokens",
        "max_model_len",
        "gpu_memory_utilization",
    ):
        v = getattr(args, flag)
        if v is not None:
            kw[flag] = v
    return MeasuredRun(run.name, run.requests, kw, run.meta, run.timeseries, run.num_gpu_blocks)


def _fmt(err: dict[str, float]) -> str:
    return "  ".join(f"{k} {err[k]:+.1%}" for k in KEYS)


def _kv_note(measured: MeasuredRun, res: ReplayResult, worst: float, kv_fitted: bool) -> str | None:
    """Why a fit may stay off: a KV-bound run's queueing is not step time."""
    if worst <= 0.05 or res.num_preemptions == 0:
        return None
    if kv_fitted:
        return (
            f"the replay preempts ({res.num_preemptions} preemptions) and the fit stays above "
            "5% with the KV capacity fitted too: prefix-cache hits between requests, which "
            "the model does not play, may be what is left"
        )
    note = (
        f"the replay preempts ({res.num_preemptions} preemptions): the run is KV-bound, "
        "and its TTFT depends on the KV capacity and on prefix-cache hits between "
        "requests, which step-time parameters cannot fit"
    )
    traj = trajectory_error(measured, res)
    if traj and traj["running_bias"] < -1.0:
        note += (
            f"; the model holds {-traj['running_bias']:.1f} fewer running requests than "
            "vLLM did on average (its timeseries): vLLM had more usable KV than the model"
        )
    return note


def _kv_report(
    measured: MeasuredRun, fit: FitResult, default_nt: int, block_size: int
) -> tuple[dict[str, Any], list[str], str] | None:
    """The fitted KV capacity beside vLLM's logged one: (JSON, lines to print, YAML comment).

    None when the capacity was not fitted (the run is not KV-bound).
    """
    if fit.non_torch_bytes is None:
        return None
    blocks, tokens = fit.fitted_blocks, fit.fitted_blocks * block_size
    nt = fit.non_torch_bytes / GiB
    info: dict[str, Any] = {
        "non_torch_gib": round(nt, 4),
        "non_torch_gib_default": round(default_nt / GiB, 4),
        "fitted_blocks": blocks,
        "fitted_tokens": tokens,
        "default_blocks": fit.start_blocks,
        "logged_blocks": measured.num_gpu_blocks,
        "held_blocks": fit.held_blocks,
    }
    lines = [
        f"KV capacity (the run is KV-bound, so fitted as the machine's non-torch memory: "
        f"{nt:.2f} GiB, the model's default {default_nt / GiB:.2f}): {blocks:,} blocks "
        f"({tokens:,} tokens) at this run's engine arguments, against the default account's "
        f"{fit.start_blocks:,}"
    ]
    if default_nt != DEFAULT_NON_TORCH_BYTES:
        lines[0] += " (the GPU's own non-torch figure)"
    ref = measured.num_gpu_blocks
    if ref:
        diff = blocks / ref - 1.0
        info["vs_logged"] = diff
        lines.append(
            f"vLLM logged {ref:,} blocks ({ref * block_size:,} tokens): the fitted capacity "
            f"differs from the logged one by {diff:+.1%}"
        )
        comment = (
            f"The KV capacity, fitted (the run is KV-bound) as vLLM's non-torch memory\n"
            f"(the model's default {DEFAULT_NON_TORCH_BYTES / GiB:.2f} GiB): {blocks:,} blocks "
            f"({tokens:,} tokens) at the run's engine\narguments; vLLM logged {ref:,} blocks "
            f"({ref * block_size:,} tokens): the fitted capacity differs by {diff:+.1%}."
        )
    else:
        lines.append("vLLM's logged capacity is not in the run (meta.json, README)")
        comment = (
            f"The KV capacity, fitted (the run is KV-bound) as vLLM's non-torch memory\n"
            f"(the model's default {DEFAULT_NON_TORCH_BYTES / GiB:.2f} GiB): {blocks:,} blocks "
            f"({tokens:,} tokens) at the run's engine arguments."
        )
    if fit.held_blocks is not None:
        held = fit.held_blocks
        line = (
            f"the run's stamps: the oldest running requests held a median {held:,} blocks "
            f"({held * block_size:,} tokens) while the KV limit bound"
        )
        if ref:
            line += f" ({held / ref - 1.0:+.1%} over the logged)"
        lines.append(line + f"; the fit's {blocks:,} is {blocks / held - 1.0:+.1%} from it")
    return info, lines, comment


def run(args: argparse.Namespace) -> int:
    if args.max_replays < 1:
        raise ConfigError("--max-replays", f"must be >= 1, got {args.max_replays}")
    catalog = catalog_from_args(args)
    measured = _with_flags(_load(args.run, args.request_rate), args)
    if not measured.requests:
        raise ConfigError("run", f"{args.run}: no completed requests")
    model, gpu = resolve_specs(measured, catalog, gpu=args.gpu, model=args.model)
    config = engine_config(measured, model)
    n = len(measured.requests)
    fit_on = range(0, n // 2) if args.split else None
    fit = fit_step_params(measured, model, gpu, config, max_replays=args.max_replays, select=fit_on)
    result: dict[str, Any] = {
        "run": measured.name,
        "model": model.name,
        "gpu": gpu.name,
        "requests": n,
        "replays": fit.replays,
        "step_params": {k: getattr(fit.params, k) for k in FITTED},
        "error_before": fit.before,
        "error_fitted": fit.after,
    }
    err = sys.stderr
    where = "first half of " if args.split else ""
    print(f"calibrate: {measured.name}: {model.name} on {gpu.name}, {n} requests", file=err)
    print(f"  defaults:    {_fmt(fit.before)}", file=err)
    print(f"  fitted ({where}the run, {fit.replays} replays): {_fmt(fit.after)}", file=err)
    kv = _kv_report(measured, fit, resolved_non_torch_bytes(gpu), config.block_size)
    if kv is not None:
        result["kv"] = kv[0]
        for line in kv[1]:
            print(f"  {line}", file=err)
    res = replay(measured, model, gpu, config, fit.params, fit.memory_params)
    note = _kv_note(measured, res, fit.max_abs_error, fit.non_torch_bytes is not None)
    if note:
        result["note"] = note
        print(f"  note: {note}", file=err)
    if args.split:
        hold = compare(measured, res, range(n // 2, n))
        result["error_holdout"] = hold
        print(f"  holdout (second half): {_fmt(hold)}", file=err)
    if args.holdout:
        other = _with_flags(_load(args.holdout, args.request_rate), args)
        m2, g2 = resolve_specs(other, catalog, gpu=args.gpu, model=args.model)
        if g2.name != gpu.name:
            print(
                f"  note: the holdout ran on {g2.name}, not {gpu.name}: "
                "step parameters and the fitted memory are per machine",
                file=err,
            )
        res2 = replay(other, m2, g2, engine_config(other, m2), fit.params, fit.memory_params)
        hold2 = compare(other, res2)
        result["holdout"] = {"run": other.name, "error": hold2}
        print(f"  holdout {other.name}: {_fmt(hold2)}", file=err)
    text = step_params_yaml(
        fit.params,
        f"dualpool calibrate {Path(args.run).name}: {model.name} on {gpu.name}\n"
        f"worst percentile error on the fitted requests: {fit.max_abs_error:.1%}",
    )
    if fit.non_torch_bytes is not None and kv is not None:
        text += memory_params_yaml(fit.non_torch_bytes, kv[2])
    if args.out:
        try:
            Path(args.out).write_text(text, encoding="utf-8")
        except OSError as e:
            raise ConfigError("--out", f"cannot write {args.out}: {e.strerror}") from None
        print(f"  wrote {args.out}", file=err)
    if args.json:
        print_json(result)
    elif not args.out:
        sys.stdout.write(text)
    return 0
