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

from dualpool import __version__
from dualpool.errors import DualpoolError

# Subcommand modules under dualpool.cli, in the order `--help` lists them.
SUBCOMMANDS: tuple[str, ...] = (
    "demo",
    "route",
    "serve",
    "extproc",
    "emulate",
    "simulate",
    "plan",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dualpool",
        description=(
            "Split one vLLM fleet into a short-context and a long-context pool, "
            "and route each request by its estimated token budget."
        ),
    )
    parser.add_argument("--version", action="version", version=f"dualpool {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"dualpool.cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
    except DualpoolError as exc:
        print(f"dualpool {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
