"""`dualpool simulate`: run a workload through a simulated fleet behind the real router.

Examples:

    dualpool simulate --workload azure-conv-like --rate 1000
    dualpool simulate --workload azure-conv-like --rate 1000 --homogeneous 300 --json
    dualpool simulate --workload lmsys-like?rate=200 --short 40 --long 12 --balancer kv
    dualpool simulate --workload azure-2024-week --processes 2 --shards 28 --warmup 60
    dualpool simulate --workload trace.csv --fleet fleet.yaml --requests-out requests.csv

Without instance counts (--fleet with counts, --short/--long, --homogeneous) each
pool is sized for --utilization of the engine model's saturated throughput on
a sample of the workload (see dualpool.simulator.sizing). An endless synthetic
workload runs for --duration seconds (default 60).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import types
from collections.abc import Mapping
from typing import Any, NoReturn

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dualpool.cli.common import (
    add_catalog_args,
    add_engine_args,
    add_slo_args,
    catalog_from_args,
    non_torch_from_args,
    print_json,
    slo_seconds,
    step_params_from_args,
)
from dualpool.engine import StepTimeParams
from dualpool.errors import CatalogError, ConfigError
from dualpool.policy import AdaptiveConfig
from dualpool.simulator import (
    SLO,
    FleetConfig,
    SimOptions,
    Summary,
    dual_pool_fleet,
    homogeneous_fleet,
    load_fleet,
    open_sink,
    simulate,
    simulate_sharded,
    size_fleet,
)
from dualpool.simulator.balancer import parse_balancer
from dualpool.workload import PRESETS, Workload, open_workload, window

DEFAULT_DURATION_S = 60.0


def _one_line_error(self: argparse.ArgumentParser, message: str) -> NoReturn:
    # argparse prints the usage block before the error; we keep one line.
    self.exit(2, f"{self.prog}: error: {message}\n")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "simulate",
        help="simulate a fleet (dual-pool or homogeneous) on a workload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.error = types.MethodType(_one_line_error, p)  # type: ignore[method-assign]
    p.add_argument("--workload", required=True, help="workload spec (preset, trace path, ...)")
    p.add_argument("--rate", type=float, default=None, help="mean arrival rate, req/s")
    p.add_argument(
        "--duration", type=float, default=None, help="simulated seconds (default 60 if endless)"
    )
    p.add_argument("--requests", type=int, default=None, help="stop after N requests")
    add_engine_args(p)
    p.add_argument("--tp", type=int, default=None, help="tensor parallel size (default: smallest)")
    fleet = p.add_mutually_exclusive_group()
    fleet.add_argument("--fleet", default=None, help="fleet YAML file")
    fleet.add_argument(
        "--homogeneous",
        type=int,
        nargs="?",
        const=0,
        default=None,
        metavar="N",
        help="one 64K pool (the baseline) of N instances (sized if N is omitted)",
    )
    fleet.add_argument("--short", type=int, default=None, metavar="N", help="short-pool instances")
    p.add_argument("--long", type=int, default=None, metavar="M", help="long-pool instances")
    p.add_argument("--b-short", type=int, default=None, help="short-pool threshold (B_short)")
    p.add_argument(
        "--balancer", default="lor", help="rr | lor | kv | gw (the gateway's picker; default lor)"
    )
    p.add_argument("--spillover", action="store_true", help="spill to larger pools when saturated")
    p.add_argument(
        "--adaptive",
        action="store_true",
        help="move B_short online from the pools' load (docs/adaptive.md)",
    )
    p.add_argument(
        "--utilization", type=float, default=0.8, help="target utilization when sizing (0.8)"
    )
    p.add_argument("--warmup", type=float, default=0.0, help="seconds per shard not counted")
    p.add_argument("--seed", type=int, default=0, help="seed (synthetic workloads, prompt bytes)")
    p.add_argument("--processes", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--shards", type=int, default=None, help="time shards (default: processes)")
    p.add_argument(
        "--bytes-per-token",
        default=None,
        help="synthetic prompt bytes per token by category, e.g. prose=4.48,code=3.52",
    )
    add_slo_args(p)
    p.add_argument("--requests-out", default=None, help="per-request rows (.csv or .parquet)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_catalog_args(p)
    p.set_defaults(func=run)


def _bytes_per_token(text: str | None) -> Mapping[str, float] | None:
    if text is None:
        return None
    out: dict[str, float] = {}
    for item in text.split(","):
        k, eq, v = item.partition("=")
        try:
            out[k.strip()] = float(v)
        except ValueError:
            raise ConfigError(
                "--bytes-per-token", f"expected CATEGORY=NUMBER, got {item!r}"
            ) from None
        if not eq or not k.strip() or out[k.strip()] <= 0:
            raise ConfigError("--bytes-per-token", f"expected CATEGORY=NUMBER > 0, got {item!r}")
    return out


def _check(args: argparse.Namespace) -> None:
    for flag, v, lo in (
        ("--rate", args.rate, 0.0),
        ("--duration", args.duration, 0.0),
    ):
        if v is not None and not v > lo:
            raise ConfigError(flag, f"must be > 0, got {v}")
    for flag, n in (
        ("--requests", args.requests),
        ("--short", args.short),
        ("--long", args.long),
        ("--tp", args.tp),
        ("--b-short", args.b_short),
    ):
        if n is not None and n < 1:
            raise ConfigError(flag, f"must be >= 1, got {n}")
    if args.homogeneous is not None and args.homogeneous < 0:
        raise ConfigError("--homogeneous", f"must be >= 1, got {args.homogeneous}")
    if args.processes < 1:
        raise ConfigError("--processes", f"must be >= 1, got {args.processes}")
    if args.shards is not None and args.shards < 1:
        raise ConfigError("--shards", f"must be >= 1, got {args.shards}")
    if args.warmup < 0:
        raise ConfigError("--warmup", f"must be >= 0, got {args.warmup}")
    if (args.short is None) != (args.long is None):
        raise ConfigError("--short", "give both --short N and --long M (or neither)")
    if args.long is not None and (args.fleet or args.homogeneous is not None):
        raise ConfigError("--long", "not allowed with --fleet or --homogeneous")
    if args.homogeneous is not None and args.b_short is not None:
        raise ConfigError("--b-short", "a homogeneous fleet has no short pool")
    try:
        parse_balancer(args.balancer)
    except ConfigError as e:
        raise ConfigError("--balancer", str(e).split(": ", 1)[-1]) from None


def _workload(args: argparse.Namespace) -> Workload:
    spec: str = args.workload
    target = spec.partition("?")[0]
    if target.startswith("synthetic:"):
        target = target[len("synthetic:") :]
    opts: dict[str, object] = {}
    if target in PRESETS:
        if "seed=" not in spec:
            opts["seed"] = args.seed
        if args.rate is not None:
            opts["rate"] = args.rate
    elif args.rate is not None:
        opts["rate"] = args.rate
    w = open_workload(spec, **opts)
    if args.duration is not None:
        w = window(w, 0.0, args.duration)
    elif _is_endless(w) and args.requests is None:
        w = window(w, 0.0, DEFAULT_DURATION_S)
    if args.requests is not None:
        from dualpool.workload import limit

        w = limit(w, args.requests)
    return w


def _is_endless(w: Any) -> bool:
    """True for a synthetic stream with neither a duration nor a request count."""
    while True:
        if getattr(w, "end_s", None) not in (None, float("inf")):
            return False
        if getattr(w, "n", None) is not None and type(w).__name__ == "Limit":
            return False
        inner = getattr(w, "inner", None)
        if inner is None:
            break
        w = inner
    if getattr(w, "loop", False):
        return True
    return hasattr(w, "num_requests") and w.num_requests is None and w.duration_s is None


def _fleet(args: argparse.Namespace) -> FleetConfig:
    cat = catalog_from_args(args)
    override = step_params_from_args(args)
    try:
        model = cat.model(args.model)
    except CatalogError as e:
        raise ConfigError("--model", str(e)) from None
    try:
        gpu = cat.gpu(args.gpu)
    except CatalogError as e:
        raise ConfigError("--gpu", str(e)) from None
    if args.fleet:
        loaded = load_fleet(args.fleet, cat)
        if override is not None:
            loaded = dataclasses.replace(loaded, step_params=override)
        non_torch = non_torch_from_args(args)
        if non_torch is not None:  # the flag's memory_params: win over the fleet YAML's
            loaded = dataclasses.replace(
                loaded, gpu=dataclasses.replace(loaded.gpu, non_torch_bytes=non_torch)
            )
        return loaded
    params = override or StepTimeParams()
    if args.homogeneous is not None:
        n = args.homogeneous or None  # 0: size it
        return homogeneous_fleet(model, gpu, instances=n, tp=args.tp, step_params=params)
    return dual_pool_fleet(
        model,
        gpu,
        short=args.short,
        long=args.long,
        b_short=args.b_short,
        tp=args.tp,
        step_params=params,
    )


def run(args: argparse.Namespace) -> int:
    _check(args)
    fleet = _fleet(args)
    options = SimOptions(
        balancer=args.balancer,
        spillover=args.spillover,
        warmup_s=args.warmup,
        bytes_per_token=_bytes_per_token(args.bytes_per_token),
        seed=args.seed,
        slo=SLO(*slo_seconds(args)),
        adaptive=AdaptiveConfig() if args.adaptive else None,
    )
    workload = _workload(args)
    sizing = None
    if not fleet.is_sized:
        fleet, sizing = size_fleet(
            fleet, workload, utilization=args.utilization, rate=args.rate, options=options
        )
    shards = args.shards or args.processes
    err = Console(stderr=True)
    t0 = time.perf_counter()
    if shards == 1:
        summary = _run_single(fleet, workload, options, args, err)
    else:
        summary = _run_sharded(fleet, workload, options, args, shards, err)
    elapsed = time.perf_counter() - t0
    out = summary.as_dict()
    out["elapsed_s"] = elapsed
    out["simulated_requests_per_s"] = (summary.requests + summary.warmup_requests) / elapsed
    out["config"] = fleet.as_dict()
    if sizing is not None:
        out["sizing"] = {
            s.name: {"share": s.share, "saturated_rps_per_instance": s.mu, "instances": s.instances}
            for s in sizing
        }
        out["sizing_utilization"] = args.utilization
    if args.json:
        print_json(_finite(out))
        return 0
    _print_table(Console(), fleet, summary, out, workload)
    return 0


def _run_single(
    fleet: FleetConfig,
    workload: Workload,
    options: SimOptions,
    args: argparse.Namespace,
    err: Console,
) -> Summary:
    sink = open_sink(args.requests_out) if args.requests_out else None
    total = workload.duration_hint()
    try:
        with Progress(
            TextColumn("simulating"),
            BarColumn(),
            TextColumn("{task.fields[req]:,} requests, t={task.completed:,.0f}s"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=args.json or not err.is_terminal,
        ) as bar:
            task = bar.add_task("sim", total=total, req=0)

            def progress(n: int, t: float) -> None:
                bar.update(task, completed=t, req=n)

            return simulate(fleet, workload, options, records=sink, progress=progress)
    finally:
        if sink is not None:
            sink.close()


def _run_sharded(
    fleet: FleetConfig,
    workload: Workload,
    options: SimOptions,
    args: argparse.Namespace,
    shards: int,
    err: Console,
) -> Summary:
    with Progress(
        TextColumn("simulating shards"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=args.json or not err.is_terminal,
    ) as bar:
        task = bar.add_task("shards", total=shards)
        return simulate_sharded(
            fleet,
            workload,
            shards=shards,
            processes=args.processes,
            options=options,
            records_path=args.requests_out,
            on_shard_done=lambda i, s: bar.advance(task),
        )


def _finite(x: Any) -> Any:
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def _ms(d: Mapping[str, Any], key: str) -> str:
    v = d.get(key)
    return "-" if v is None else f"{v * 1000:,.0f}"


def _print_table(
    console: Console, fleet: FleetConfig, summary: Summary, out: Mapping[str, Any], w: Workload
) -> None:
    console.print(f"[bold]dualpool simulate[/]: {w.describe()}")
    console.print(f"fleet: {fleet.describe()}")
    rows = [*out["pools"].items(), ("fleet", out["totals"])]
    t = Table(title=f"Load over {out['window_s']:,.0f} simulated seconds")
    for c in ("pool", "inst", "GPUs", "req", "rejected", "misrouted", "pre/1k",
              "util", "KV", "GPU-h"):  # fmt: skip
        t.add_column(c, justify="left" if c == "pool" else "right")
    for name, d in rows:
        t.add_row(
            name,
            f"{d['instances']:,}",
            f"{d['gpus']:,}",
            f"{d['requests']:,}",
            f"{d['rejected']:,}",
            f"{d['misrouted']:,}",
            f"{d['preemptions_per_1k']:.1f}",
            f"{d['utilization']:.0%}",
            f"{d['kv_usage_mean']:.0%}",
            f"{d['gpu_hours']:,.2f}",
        )
    console.print(t)
    t = Table(title="Latency")
    for c in ("pool", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "TPOT p99 ms", "E2E p99 s",
              "SLO met"):  # fmt: skip
        t.add_column(c, justify="left" if c == "pool" else "right")
    for name, d in rows:
        slo = d["slo"]
        t.add_row(
            name,
            _ms(d["ttft_s"], "p50"),
            _ms(d["ttft_s"], "p99"),
            _ms(d["tpot_s"], "p50"),
            _ms(d["tpot_s"], "p99"),
            "-" if d["e2e_s"]["p99"] is None else f"{d['e2e_s']['p99']:,.1f}",
            "-" if slo["attainment"] is None else f"{slo['attainment']:.1%}",
        )
    console.print(t)
    s = summary.slo
    console.print(
        f"SLO: TTFT <= {s.ttft_s:g} s and TPOT <= {s.tpot_s * 1000:g} ms; "
        f"'SLO met' is the fraction of completed requests meeting both."
    )
    if "sizing" in out:
        console.print(
            "sized for "
            f"{out['sizing_utilization']:.0%} utilization: "
            + "; ".join(
                f"{k}: {v['share']:.1%} of traffic, {v['saturated_rps_per_instance']:.2f} req/s "
                f"per saturated instance -> {v['instances']}"
                for k, v in out["sizing"].items()
            )
        )
    console.print(
        f"{summary.requests + summary.warmup_requests:,} requests in {out['elapsed_s']:.1f} s "
        f"({out['simulated_requests_per_s']:,.0f} simulated requests/s)",
        style="dim",
    )
