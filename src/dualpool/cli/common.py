"""Helpers shared by subcommands: the flags every face spells the same way (model,
GPU, SLOs), pool specs from the command line, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dualpool.engine.catalog import Catalog
from dualpool.engine.memory import memory_params_from_mapping
from dualpool.engine.step_params import StepTimeParams, step_params_from_mapping
from dualpool.errors import CatalogError, ConfigError
from dualpool.policy import PoolSpec

__all__ = [
    "DEFAULT_GPU",
    "DEFAULT_MODEL",
    "add_catalog_args",
    "add_engine_args",
    "add_pool_args",
    "add_slo_args",
    "catalog_from_args",
    "non_torch_from_args",
    "pools_from_args",
    "print_json",
    "slo_seconds",
    "step_params_from_args",
]


def add_catalog_args(parser: argparse.ArgumentParser, *, step_params: bool = True) -> None:
    """--catalog FILE (extra models/GPUs) and, optionally, --step-params FILE."""
    parser.add_argument(
        "--catalog",
        default=None,
        metavar="FILE",
        help="YAML with extra models: and gpus: (see dualpool.engine.catalog)",
    )
    if step_params:
        parser.add_argument(
            "--step-params",
            default=None,
            metavar="FILE",
            help="YAML with a step_params: mapping and optionally memory_params: "
            "(e.g. from dualpool calibrate)",
        )


def catalog_from_args(args: argparse.Namespace) -> Catalog:
    """The built-in catalog plus --catalog FILE's entries (one-line error naming the flag).

    When --step-params FILE carries a `memory_params:` mapping (the machine's
    measured non-torch memory, e.g. from `dualpool calibrate`), every GPU the
    catalog hands out takes it: it describes the machine, as the step
    parameters do, and vLLM measures it afresh at each start-up.
    """
    path = getattr(args, "catalog", None)
    catalog = Catalog()
    if path:
        try:
            catalog = Catalog().load_yaml(path)
        except CatalogError as e:
            raise ConfigError("--catalog", str(e)) from None
    non_torch = non_torch_from_args(args)
    return catalog if non_torch is None else catalog.with_non_torch_bytes(non_torch)


def _params_file(args: argparse.Namespace) -> tuple[str, dict[str, Any]] | None:
    """--step-params FILE as (path, {"step_params": ..., "memory_params": ...}), or None."""
    path = getattr(args, "step_params", None)
    if not path:
        return None
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError("--step-params", f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError("--step-params", f"{path}: not YAML: {e}") from None
    if isinstance(data, dict) and ("step_params" in data or "memory_params" in data):
        return path, {
            "step_params": data.get("step_params"),
            "memory_params": data.get("memory_params"),
        }
    # A bare mapping is a step_params: mapping (the first format).
    return path, {"step_params": data, "memory_params": None}


def step_params_from_args(args: argparse.Namespace) -> StepTimeParams | None:
    """--step-params FILE's `step_params:` mapping, or None when the flag or the key is absent."""
    got = _params_file(args)
    if got is None or got[1]["step_params"] is None:
        return None
    path, data = got
    try:
        return step_params_from_mapping(data["step_params"], path)
    except ConfigError as e:
        raise ConfigError("--step-params", f"{path}: {e}") from None


def non_torch_from_args(args: argparse.Namespace) -> int | None:
    """--step-params FILE's `memory_params:` non-torch bytes, or None when absent."""
    got = _params_file(args)
    if got is None:
        return None
    path, data = got
    try:
        return memory_params_from_mapping(data["memory_params"], path)
    except ConfigError as e:
        raise ConfigError("--step-params", f"{path}: {e}") from None


# One default for every subcommand: the paper's setup (Llama-3-70B on A100-80GB).
DEFAULT_MODEL = "llama-3-70b"
DEFAULT_GPU = "a100-80gb"
DEFAULT_SLO_TTFT_S = 2.0
DEFAULT_SLO_TPOT_MS = 80.0


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """--model and --gpu: catalog names, the same defaults in every subcommand."""
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"catalog model (default {DEFAULT_MODEL})"
    )
    parser.add_argument("--gpu", default=DEFAULT_GPU, help=f"catalog GPU (default {DEFAULT_GPU})")


class _Deprecated(argparse.Action):
    """An old spelling: still works (same unit), hidden from --help, says what replaced it."""

    def __init__(self, option_strings: list[str], dest: str, **kw: Any) -> None:
        self.replacement = kw.pop("replacement")
        super().__init__(option_strings, dest, **kw)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(
            f"dualpool: {option_string} is deprecated; use {self.replacement} (same unit)",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_slo_args(parser: argparse.ArgumentParser) -> None:
    """--slo-ttft (seconds) and --slo-tpot (milliseconds), P99 targets, in every subcommand."""
    parser.add_argument(
        "--slo-ttft",
        type=float,
        default=DEFAULT_SLO_TTFT_S,
        metavar="SECONDS",
        help=f"P99 time-to-first-token target, in seconds (default {DEFAULT_SLO_TTFT_S:g})",
    )
    parser.add_argument(
        "--slo-tpot",
        type=float,
        default=DEFAULT_SLO_TPOT_MS,
        metavar="MS",
        help=f"P99 time-per-output-token target, in milliseconds (default {DEFAULT_SLO_TPOT_MS:g})",
    )
    for old, new in (("--ttft-slo", "--slo-ttft"), ("--tpot-slo", "--slo-tpot")):
        parser.add_argument(
            old,
            dest=new[2:].replace("-", "_"),
            type=float,
            default=argparse.SUPPRESS,
            action=_Deprecated,
            replacement=new,
            help=argparse.SUPPRESS,
        )


def slo_seconds(args: argparse.Namespace) -> tuple[float, float]:
    """(TTFT, TPOT) targets in seconds from --slo-ttft (s) and --slo-tpot (ms)."""
    ttft, tpot_ms = float(args.slo_ttft), float(args.slo_tpot)
    if not ttft > 0:
        raise ConfigError("--slo-ttft", f"must be > 0 seconds, got {ttft:g}")
    if tpot_ms < 1.0:
        hint = f" (seconds? that is {tpot_ms * 1000:g})" if tpot_ms > 0 else ""
        raise ConfigError(
            "--slo-tpot", f"is in milliseconds and must be >= 1, got {tpot_ms:g}{hint}"
        )
    return ttft, tpot_ms / 1000.0


def add_pool_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pools",
        default="short:8192,long:65536",
        help="pools as NAME:MAX_MODEL_LEN[:THRESHOLD], comma separated "
        "(default: short:8192,long:65536)",
    )
    parser.add_argument(
        "--b-short",
        type=int,
        default=None,
        help="threshold of the smallest pool (B_short); default: its max_model_len",
    )


def pools_from_args(args: argparse.Namespace) -> list[PoolSpec]:
    pools: list[PoolSpec] = []
    for item in str(args.pools).split(","):
        parts = item.strip().split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise ConfigError("--pools", f"expected NAME:MAX_MODEL_LEN[:THRESHOLD], got {item!r}")
        try:
            nums = [int(p) for p in parts[1:]]
        except ValueError:
            raise ConfigError("--pools", f"lengths must be integers, got {item!r}") from None
        pools.append(PoolSpec(parts[0], nums[0], nums[1] if len(nums) == 2 else None))
    if args.b_short is not None:
        smallest = min(pools, key=lambda p: p.max_model_len)
        i = pools.index(smallest)
        pools[i] = PoolSpec(smallest.name, smallest.max_model_len, args.b_short)
    return pools


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
