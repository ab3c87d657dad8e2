"""Engine-model fidelity: measured vLLM runs vs the model, percentile by percentile.

    .venv/bin/python benchmarks/fidelity.py [--quick] [--runs DIR] [--run NAME]
                                            [--catalog FILE] [--step-params FILE]

Each run in DIR (default: shared/data/vllm-runs; the format is in its README:
NAME_meta.json + NAME_requests.jsonl [+ NAME_timeseries.csv]) is replayed
through one engine `Scheduler` with the run's own engine arguments (meta.json
engine_kwargs; vLLM's defaults where null), its arrival times and its
per-request input/output tokens. The model and GPU come from the run (meta
model id; meta gpu field or the file-name prefix, e.g. rtx4090_ -> rtx-4090);
one missing from the catalog stops the benchmark with a one-line message
saying to pass --catalog FILE.

Printed per run: measured vs modelled P50/P90 of TTFT, E2E and TPOT and the
relative errors; the KV capacity the memory model plans vs vLLM's logged
num_gpu_blocks (where the run logged it); preemptions in the model; and the
running/waiting trajectory against the run's timeseries.csv (mean absolute
difference over the run). Two rows per run:

- `public`: the memory plan's own KV capacity and the default StepTimeParams
  (datasheet specs only), the issue's target (within 10% / 3%);
- `matched_kv`: the same with vLLM's logged KV capacity (where known), to
  separate timing errors from memory errors.

--step-params FILE takes a `dualpool calibrate` fragment: its step_params:
and, when the fit found the run KV-bound, its memory_params: (the machine's
non-torch memory, applied to the GPU, so the `public` row's KV capacity is
the fitted one). Each row also reports the first and the second half of the
run's requests (`halves`), so "calibrated on the first half, checked on the
second" is reproduced by

    dualpool calibrate RUN_meta.json --split --out fit.yaml
    .venv/bin/python benchmarks/fidelity.py --quick --run RUN --step-params fit.yaml

(--run NAME: only that run; a fragment is fitted per GPU.)

Without --quick it also fits the step parameters (and, on a KV-bound run,
the capacity) on the first half of each run (`dualpool calibrate --split`)
and reports the second half as holdout (a few seconds per run). --quick skips that fit; the replays themselves
are cheap (well under a second for a 300-request run), so they are the same. The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from _common import emit, shared_data_dir
from dualpool.cli.common import non_torch_from_args, step_params_from_args
from dualpool.engine import Catalog, StepTimeParams
from dualpool.engine.measured import (
    MeasuredRun,
    ReplayResult,
    compare,
    engine_config,
    find_runs,
    fit_step_params,
    latency_stats,
    measured_stats,
    replay,
    resolve_specs,
    trajectory_error,
)
from dualpool.engine.memory import plan_memory
from dualpool.errors import ConfigError, DualpoolError

KEYS = ("ttft_p50", "ttft_p90", "e2e_p50", "e2e_p90", "tpot_p50", "tpot_p90")


def _load_params(path: str | None) -> tuple[StepTimeParams, int | None]:
    """The step parameters and the non-torch bytes of a --step-params file (the CLI's loader)."""
    if path is None:
        return StepTimeParams(), None
    ns = argparse.Namespace(step_params=path)
    return step_params_from_args(ns) or StepTimeParams(), non_torch_from_args(ns)


def _row(label: str, run: MeasuredRun, res: ReplayResult) -> dict[str, Any]:
    meas = measured_stats(run).as_dict()
    mod = latency_stats(res.ttft, res.e2e, res.tpot).as_dict()
    err = compare(run, res)
    n = len(run.requests)
    halves = {
        "first": compare(run, res, range(0, n // 2)),
        "second": compare(run, res, range(n // 2, n)),
    }
    print(f"  {label:10s} KV blocks {res.num_gpu_blocks:,}  preemptions {res.num_preemptions}")
    for k in KEYS:
        print(
            f"    {k:9s} measured {meas[k]:9.4f} s  model {mod[k]:9.4f} s  {err[k]:+7.1%}"
            f"   (first half {halves['first'][k]:+7.1%}, second {halves['second'][k]:+7.1%})"
        )
    traj = trajectory_error(run, res)
    if traj:
        print(
            f"    trajectory: running off by {traj['running_mae']:.1f}, "
            f"waiting by {traj['waiting_mae']:.1f} requests on average "
            f"(running: model - measured {traj['running_bias']:+.1f})"
        )
    return {
        "num_gpu_blocks": res.num_gpu_blocks,
        "preemptions": res.num_preemptions,
        "measured": meas,
        "model": mod,
        "error": err,
        "max_abs_error": max(abs(v) for v in err.values()),
        "halves": halves,
        "first_half_max_abs": max(abs(v) for v in halves["first"].values()),
        "second_half_max_abs": max(abs(v) for v in halves["second"].values()),
        **traj,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the calibration fit")
    ap.add_argument("--runs", default=None, help="folder of measured runs")
    ap.add_argument("--run", default=None, metavar="NAME", help="only this run of the folder")
    ap.add_argument("--catalog", default=None, help="YAML with extra models: / gpus:")
    ap.add_argument(
        "--step-params",
        default=None,
        help="YAML with a step_params: mapping (and memory_params:), e.g. dualpool calibrate's",
    )
    args = ap.parse_args()
    runs_dir = Path(args.runs) if args.runs else shared_data_dir() / "vllm-runs"
    try:
        catalog = Catalog().load_yaml(args.catalog) if args.catalog else Catalog()
        runs = find_runs(runs_dir)
        if args.run is not None:
            runs = [r for r in runs if r.name == args.run]
            if not runs:
                raise ConfigError("--run", f"no run {args.run!r} in {runs_dir}")
        params, non_torch = _load_params(args.step_params)
        if non_torch is not None:  # the machine's measured non-torch memory, on its GPUs
            catalog = catalog.with_non_torch_bytes(non_torch)
        specs = [resolve_specs(run, catalog) for run in runs]
    except DualpoolError as e:
        print(f"fidelity: error: {e}", file=sys.stderr)
        return 2
    out: dict[str, Any] = {
        "runs": {},
        "quick": args.quick,
        "step_params_file": args.step_params,
        "non_torch_gib": None if non_torch is None else non_torch / 2**30,
    }
    worst = 0.0
    worst_kv = 0.0
    for run, (model, gpu) in zip(runs, specs, strict=True):
        cfg = engine_config(run, model)
        plan = plan_memory(model, gpu, cfg, check=False)
        print(
            f"{run.name}: {model.name} on {gpu.name}, TP {cfg.tensor_parallel_size}, "
            f"max_num_seqs {cfg.max_num_seqs}, max_num_batched_tokens "
            f"{cfg.max_num_batched_tokens}, max_model_len {cfg.max_model_len}, vLLM "
            f"{run.vllm_version}, {len(run.requests)} requests"
        )
        entry: dict[str, Any] = {
            "model": model.name,
            "gpu": gpu.name,
            "kv_tokens_model": plan.kv_cache_tokens,
            "kv_tokens_vllm": None,
            "kv_error": None,
            "memory": {
                "usable_gib": plan.usable_bytes / 2**30,
                "weights_gib": plan.weight_bytes / 2**30,
                "activation_gib": plan.activation_bytes / 2**30,
                "overhead_gib": plan.overhead_bytes / 2**30,
                "kv_gib": plan.kv_cache_bytes / 2**30,
            },
        }
        if run.num_gpu_blocks:
            vllm_tokens = run.num_gpu_blocks * cfg.block_size
            kv_err = plan.kv_cache_tokens / vllm_tokens - 1.0
            entry["kv_tokens_vllm"] = vllm_tokens
            entry["kv_error"] = kv_err
            worst_kv = max(worst_kv, abs(kv_err))
            print(
                f"  KV capacity: model {plan.kv_cache_tokens:,} tokens"
                + (" (the fitted non-torch memory)" if non_torch is not None else "")
                + f", vLLM {vllm_tokens:,} ({kv_err:+.1%})"
            )
        else:
            print(f"  KV capacity: model {plan.kv_cache_tokens:,} tokens (vLLM's not logged)")
        feasible = plan.num_gpu_blocks >= plan.blocks_per_max_len_seq
        entry["max_model_len_accepted"] = feasible
        if not feasible:
            print(f"  the model refuses max_model_len {cfg.max_model_len} (vLLM started)")
        try:
            res = replay(run, model, gpu, cfg, params, num_gpu_blocks=None if feasible else
                         max(plan.num_gpu_blocks, plan.blocks_per_max_len_seq))  # fmt: skip
        except DualpoolError as e:
            print(f"fidelity: error: {run.name}: {e}", file=sys.stderr)
            return 2
        entry["public"] = _row("public", run, res)
        worst = max(worst, entry["public"]["max_abs_error"])
        if run.num_gpu_blocks:
            res2 = replay(run, model, gpu, cfg, params, num_gpu_blocks=run.num_gpu_blocks)
            entry["matched_kv"] = _row("matched_kv", run, res2)
        if not args.quick:
            # `dualpool calibrate --split`: fit on the first half's percentiles,
            # check the second half of the same replay.
            n = len(run.requests)
            fit = fit_step_params(run, model, gpu, cfg, params, select=range(0, n // 2))
            res3 = replay(run, model, gpu, cfg, fit.params, fit.memory_params)
            hold = compare(run, res3, range(n // 2, n))
            defaults_hold = compare(run, replay(run, model, gpu, cfg, params), range(n // 2, n))
            entry["calibrated_split"] = {
                "defaults_first_half": fit.before,
                "defaults_first_half_max_abs": max(abs(v) for v in fit.before.values()),
                "defaults_second_half_max_abs": max(abs(v) for v in defaults_hold.values()),
                "fitted": fit.after,
                "holdout": hold,
                "fitted_max_abs": fit.max_abs_error,
                "holdout_max_abs": max(abs(v) for v in hold.values()),
                "flops_efficiency": fit.params.flops_efficiency,
                "bandwidth_efficiency": fit.params.bandwidth_efficiency,
                "kv_fitted": fit.non_torch_bytes is not None,
                "non_torch_gib": None
                if fit.non_torch_bytes is None
                else fit.non_torch_bytes / 2**30,
                "fitted_blocks": fit.fitted_blocks,
                "held_blocks": fit.held_blocks,
            }
            kv_note = (
                f" (KV-bound: capacity fitted too, {fit.fitted_blocks:,} blocks)"
                if fit.non_torch_bytes is not None
                else ""
            )
            print(
                f"  calibrated on the first half{kv_note}: worst {fit.max_abs_error:.1%} (defaults "
                f"{entry['calibrated_split']['defaults_first_half_max_abs']:.1%}); second half "
                f"(holdout): worst {entry['calibrated_split']['holdout_max_abs']:.1%} (defaults "
                f"{entry['calibrated_split']['defaults_second_half_max_abs']:.1%})"
            )
        out["runs"][run.name] = entry
    out["max_abs_latency_error"] = worst
    out["max_abs_kv_error"] = worst_kv
    out["latency_within_10pct"] = worst <= 0.10
    out["kv_within_3pct"] = worst_kv <= 0.03
    print(
        f"worst latency percentile error {worst:.1%} (target 10%), "
        f"worst KV capacity error {worst_kv:.1%} (target 3%)"
    )
    emit(out if not math.isnan(worst) else {**out, "max_abs_latency_error": None})
    return 0


if __name__ == "__main__":
    sys.exit(main())
