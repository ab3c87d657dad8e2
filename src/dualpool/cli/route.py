"""`dualpool route`: estimate and route OpenAI request bodies, offline.

Reads one JSON body, or JSONL (one body per line), from a file or stdin and
prints, per body, the estimate and the decision with its reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dualpool.budget import EstimatorConfig
from dualpool.cli.common import add_pool_args, pools_from_args, print_json
from dualpool.errors import ConfigError, RequestError
from dualpool.router import Router


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "route",
        help="estimate the token budget of request bodies and show which pool gets each",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", nargs="?", default="-", help="JSON or JSONL file ('-' = stdin)")
    add_pool_args(p)
    p.add_argument("--snapshot", help="calibrator snapshot (JSON) to start from")
    p.add_argument("--completions", action="store_true", help="bodies are /v1/completions")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    router = Router(pools_from_args(args), EstimatorConfig())
    if args.snapshot:
        try:
            snap = json.loads(Path(args.snapshot).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError("--snapshot", f"cannot read {args.snapshot}: {exc}") from None
        router.estimator.calibrator.restore(snap)
    try:
        text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text()
    except OSError as exc:
        raise ConfigError("input", f"cannot read {args.input}: {exc.strerror}") from None
    stripped = text.strip()
    lines = [stripped] if stripped.startswith("{") and "\n{" not in stripped else text.splitlines()
    status = 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            body = json.loads(line)
            routed = router.route(body, chat=False if args.completions else None)
        except ValueError as exc:
            if not isinstance(exc, RequestError):
                exc = RequestError(f"not valid JSON: {exc}")
            print_json({"line": lineno, "error": str(exc)})
            status = 1
            continue
        est, dec = routed.estimate, routed.decision
        print_json(
            {
                "line": lineno,
                "category": est.category,
                "prompt_tokens_estimate": est.prompt_tokens,
                "prompt_tokens_point": est.prompt_tokens_point,
                "output_tokens": est.output_tokens,
                "output_source": est.output_source,
                "budget": est.total,
                "pool": dec.pool_name or None,
                "reason": dec.reason.value,
                **({"message": dec.message} if dec.message else {}),
            }
        )
    return status
