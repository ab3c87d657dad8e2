"""`dualpool plan`: should this fleet split into a short and a long pool, and how big?

Reads a workload (any spec `open_workload` accepts: a trace, a CDF, a preset),
retimes it to --rate, and sizes a homogeneous fleet (every instance configured
for the longest context) against a dual-pool split:

  alpha and rho, the paper's closed form alpha(1 - 1/rho), the discrete form
  with ceilings and a utilization cap, an SLO-aware estimate (the simulated
  per-instance load curve), and the counts the simulator confirms: whole pools
  on windows of the workload (the homogeneous and the split fleet on the same
  requests and arrival times), windows added until the saving's 95% interval
  is within --precision points; GPUs, GPU-hours a day, dollars a year, the
  saving with its interval; a sweep of B_short and a three-pool variant.
  --json prints one object; --report DIR writes an HTML page.

Pool configs default to the paper's (short 8192/128/16384, long 65536/16/8192)
at the smallest tensor-parallel size at which each fits in memory.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dualpool.cli.common import (
    add_catalog_args,
    add_engine_args,
    add_slo_args,
    catalog_from_args,
    print_json,
    slo_seconds,
    step_params_from_args,
)
from dualpool.engine import EngineConfig
from dualpool.errors import CatalogError, ConfigError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "plan",
        help="size a homogeneous fleet against a short/long split (analytic + simulation)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("workload", help="workload spec (trace path, CDF JSON, or preset name)")
    p.add_argument("--rate", type=float, required=True, help="fleet arrival rate, req/s")
    add_engine_args(p)
    p.add_argument("--weight-dtype", default=None, choices=("bf16", "fp8"), help="weights dtype")
    p.add_argument("--price", type=float, default=None, help="$/GPU-hour (default: catalog)")
    add_slo_args(p)
    p.add_argument(
        "--utilization", type=float, default=0.9, help="utilization cap of the discrete form"
    )
    p.add_argument("--b-short", type=int, default=8192, help="B_short, tokens (default 8192)")
    p.add_argument(
        "--short",
        default=None,
        metavar="LEN/SEQS/BATCH[/TP]",
        help="short pool config, e.g. 8192/128/16384 (TP: smallest that fits)",
    )
    p.add_argument("--long", default=None, metavar="LEN/SEQS/BATCH[/TP]", help="long pool config")
    p.add_argument(
        "--no-memory-check",
        action="store_true",
        help="skip vLLM's memory check (the paper's setting): KV sized as the configs assume",
    )
    p.add_argument(
        "--no-simulate", action="store_true", help="analytic only (no simulation search)"
    )
    p.add_argument(
        "--simulate-sweep", action="store_true", help="also verify every sweep point by simulation"
    )
    p.add_argument(
        "--precision",
        type=float,
        default=2.0,
        help="stop adding windows when the saving's 95%% half-width is at most this many "
        "points (default 2)",
    )
    p.add_argument(
        "--min-windows", type=int, default=4, help="windows simulated at least (default 4)"
    )
    p.add_argument(
        "--max-windows",
        type=int,
        default=None,
        help="windows simulated at most (default 40 at 2 points of precision, x (2 / "
        "precision)^2: 160 at 1 point)",
    )
    p.add_argument(
        "--search-every-window",
        action="store_true",
        help="search every window's counts (default: after the first round, one run per pool "
        "and window, read with the pooled elasticity)",
    )
    p.add_argument(
        "--window-requests",
        type=int,
        default=None,
        help="distinct workload requests per window (default: the whole workload up to "
        "50000 requests, else a run's measured requests)",
    )
    p.add_argument(
        "--measure-s",
        type=float,
        default=40.0,
        help="measured seconds of each run at --rate (default 40; at least 2000 requests)",
    )
    p.add_argument(
        "--warmup-s",
        type=float,
        default=None,
        help="seconds filling the instances before measuring (default: from service times)",
    )
    p.add_argument(
        "--sim-requests",
        type=int,
        default=3000,
        help="requests per run of the calibrated load curve (default 3000)",
    )
    p.add_argument(
        "--sim-instances",
        type=int,
        default=4,
        help="instances of the calibrated load curve's sub-fleet (default 4)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="chooses the windows of the workload and the simulation's seeds (default 0)",
    )
    p.add_argument(
        "--max-requests",
        type=int,
        default=200_000,
        help="read at most this many requests of the workload (default 200000)",
    )
    p.add_argument(
        "--backend",
        default="local",
        choices=("local", "ray", "serial"),
        help="where sweep jobs run: local processes, a Ray cluster, or serially (default local)",
    )
    p.add_argument(
        "--processes", type=int, default=None, help="local processes (default: all cores)"
    )
    p.add_argument("--address", default=None, help="Ray cluster address (with --backend ray)")
    p.add_argument(
        "--adaptive",
        action="store_true",
        help="also simulate the whole split fleet with the adaptive B_short (docs/adaptive.md): "
        "the GPUs it needs against the static threshold's, and its gain at the planned sizes",
    )
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.add_argument("--report", default=None, metavar="DIR", help="write DIR/index.html with plots")
    add_catalog_args(p)
    p.set_defaults(func=run)


def parse_pool(flag: str, text: str) -> EngineConfig:
    """LEN/SEQS/BATCH[/TP] -> EngineConfig (TP 1 means: let the planner choose)."""
    parts = text.split("/")
    if len(parts) not in (3, 4):
        raise ConfigError(flag, f"expected LEN/SEQS/BATCH[/TP], e.g. 8192/128/16384, got {text!r}")
    try:
        nums = [int(x) for x in parts]
    except ValueError:
        raise ConfigError(flag, f"values must be integers, got {text!r}") from None
    return EngineConfig(
        max_model_len=nums[0],
        max_num_seqs=nums[1],
        max_num_batched_tokens=nums[2],
        tensor_parallel_size=nums[3] if len(nums) == 4 else 1,
    )


def run(args: argparse.Namespace) -> int:
    from dualpool.planner import Interval, PlanSettings, VerifySettings, mix_from_requests, plan
    from dualpool.planner._parallel import make_runner
    from dualpool.planner._report import render_text, write_html
    from dualpool.workload import limit, open_workload

    for flag, v in (("--sim-requests", args.sim_requests), ("--sim-instances", args.sim_instances)):
        if v < 1:
            raise ConfigError(flag, f"must be >= 1, got {v}")
    if not 0 < args.precision < 100:
        raise ConfigError("--precision", f"must be in (0, 100) points, got {args.precision}")
    if args.min_windows < 2:
        raise ConfigError("--min-windows", f"must be >= 2, got {args.min_windows}")
    if args.max_windows is not None and args.max_windows < args.min_windows:
        raise ConfigError(
            "--max-windows",
            f"must be >= --min-windows ({args.min_windows}), got {args.max_windows}",
        )
    if args.max_requests < 2:
        raise ConfigError("--max-requests", f"must be >= 2, got {args.max_requests}")
    if args.processes is not None and args.processes < 1:
        raise ConfigError("--processes", f"must be >= 1, got {args.processes}")
    catalog = catalog_from_args(args)
    try:
        model = catalog.model(args.model, args.weight_dtype)
    except CatalogError as e:
        raise ConfigError("--model", str(e)) from None
    try:
        gpu = catalog.gpu(args.gpu)
    except CatalogError as e:
        raise ConfigError("--gpu", str(e)) from None
    slo_ttft_s, slo_tpot_s = slo_seconds(args)
    settings = PlanSettings(
        model=model,
        gpu=gpu,
        rate=args.rate,
        ttft_slo_s=slo_ttft_s,
        tpot_slo_s=slo_tpot_s,
        utilization=args.utilization,
        price_per_hour=args.price,
        b_short=args.b_short,
        short=parse_pool("--short", args.short) if args.short else None,
        long=parse_pool("--long", args.long) if args.long else None,
        check_memory=not args.no_memory_check,
        step_params=step_params_from_args(args),
        simulate=not args.no_simulate,
        simulate_sweep=args.simulate_sweep,
        verify=VerifySettings(
            requests=args.sim_requests,
            instances=args.sim_instances,
            seed=args.seed,
            precision=args.precision / 100.0,
            min_windows=args.min_windows,
            max_windows=args.max_windows,
            block=args.window_requests,
            measure_s=args.measure_s,
            warmup_s=args.warmup_s,
            probe_band=None if args.search_every_window else 0.15,
            batch=max(2, args.processes or os.cpu_count() or 2),
        ),
    )
    w = open_workload(args.workload)
    mix = mix_from_requests(list(limit(w, args.max_requests)), w.describe())
    err = Console(stderr=True)
    with Progress(
        TextColumn("[bold]plan[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task("sizing pools", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        def on_round(windows: int, saving: Interval) -> None:
            hw = saving.half_width
            bar.update(
                task,
                description=f"{windows} windows: saving {saving.mean:.1%}"
                + (f" +- {hw:.1%}" if math.isfinite(hw) else ""),
            )

        runner = make_runner(
            args.backend, processes=args.processes, address=args.address, progress=progress
        )
        result = plan(settings, mix, runner, on_round)
        if args.adaptive:
            result["adaptive"] = _adaptive(args, settings, mix, result, bar)
    samples = {f: result[f].pop("samples", None) for f in ("homogeneous", "split")}
    if args.json:
        print_json(result)
    else:
        render_text(result, Console())
        if args.adaptive:
            _render_adaptive(result["adaptive"], Console())
    if args.report:
        for f, smp in samples.items():
            if smp is not None:
                result[f]["samples"] = smp
        path = write_html(result, mix, args.report)
        err.print(f"report: {path}")
    return 0


def _adaptive(
    args: argparse.Namespace, settings: Any, mix: Any, result: dict[str, Any], bar: Progress
) -> dict[str, Any]:
    """`--adaptive`: the whole split fleet with the controller (planner/_adaptive.py)."""
    from dualpool.planner._adaptive import AdaptivePlanSettings, adaptive_plan
    from dualpool.simulator import SLO

    task = bar.add_task("adaptive B_short", total=None)
    return adaptive_plan(
        result,
        mix,
        model=settings.model,
        gpu=settings.gpu,
        rate=settings.rate,
        slo=SLO(ttft_s=settings.ttft_slo_s, tpot_s=settings.tpot_slo_s),
        step_params=settings.step_params,
        settings=AdaptivePlanSettings(windows=args.min_windows, seed=args.seed),
        progress=lambda what: bar.update(task, description=f"adaptive: {what}"),
    )


def _render_adaptive(a: dict[str, Any], console: Console) -> None:
    if "skipped" in a:
        console.print(f"[bold]Adaptive B_short[/]: {a['skipped']}")
        return
    p = a["at_planned"]
    s, d = p["static"], p["adaptive"]
    ci = p["adaptive_over_static_slo_ratio_ci"]
    console.print(
        f"[bold]Adaptive B_short[/] (whole split fleet, {a['windows']} windows of "
        f"{a['measure_s']:.0f} s, {a['simulations']} simulations)"
    )
    console.print(
        f"  at the planned {p['gpus']} GPUs: P99/SLO ratio static {s['slo_ratio']:.2f} "
        f"({s['windows_meeting']}/{a['windows']} windows meet), adaptive {d['slo_ratio']:.2f} "
        f"({d['windows_meeting']}/{a['windows']}; B_short mean {d['threshold_mean']:.0f}, "
        f"{d['moves']} moves); adaptive/static {p['adaptive_over_static_slo_ratio']:.2f}"
        + (f" (95% CI {ci[0]:.2f}-{ci[1]:.2f})" if ci else "")
    )
    st, ad = a["sized"]["static"], a["sized"]["adaptive"]
    console.print(
        f"  GPUs needed: static {st['gpus']} {st['instances']}, adaptive {ad['gpus']} "
        f"{ad['instances']}: the controller saves {a['gpus_saved_by_controller']} GPUs "
        f"({a['share_saved_by_controller']:.1%}"
        + (
            f"; {100 * a['saving_points_from_controller']:+.1f} points of the split's saving"
            if a["saving_points_from_controller"] is not None
            else ""
        )
        + ")"
    )
