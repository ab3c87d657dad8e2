"""Helpers shared by subcommands: pool specs from the command line, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dualpool.errors import ConfigError
from dualpool.policy import PoolSpec

__all__ = ["add_pool_args", "pools_from_args", "print_json"]


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
