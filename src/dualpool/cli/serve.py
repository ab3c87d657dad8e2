"""`dualpool serve`: run the dual-pool gateway in front of real vLLM pools.

dualpool serve --config fleet.yaml           # serve until SIGTERM, then drain
dualpool serve --check --config fleet.yaml   # validate and exit (0 ok, 2 error)
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, Any

from dualpool.errors import ConfigError

if TYPE_CHECKING:
    from dualpool.gateway import GatewayConfig


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="run the OpenAI-compatible dual-pool router in front of vLLM pools",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="fleet YAML file (see docs/gateway.md)")
    p.add_argument("--check", action="store_true", help="validate the config and exit")
    p.add_argument("--host", help="listen address (overrides listen.host)")
    p.add_argument("--port", type=int, help="listen port (overrides listen.port)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dualpool.gateway import load_config
    from dualpool.gateway import run as serve

    config = load_config(args.config)
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise ConfigError("--port", f"must be in [0, 65535], got {args.port}")
        config = dataclasses.replace(config, port=args.port)
    if args.host is not None:
        config = dataclasses.replace(config, host=args.host)
    if args.check:
        if config.calibrator.shared is not None:
            try:
                import redis  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "calibrator.shared", "needs the Redis client: pip install 'dualpool[redis]'"
                ) from None
        pools = ", ".join(
            f"{p.name}({len(p.endpoints) or 'dns ' + p.dns.name if p.dns else len(p.endpoints)})"
            for p in config.pools
        )
        models = describe_models(config)
        print(f"config ok: pools {pools}" + (f"; models {models}" if models else ""))
        return 0
    return serve(config, args.config, host=args.host, port=args.port)


def describe_models(config: GatewayConfig) -> str:
    """`models:` in one line for --check: each model, its aliases and pools ('' if none)."""
    return ", ".join(
        m.name + "".join(f" (alias {a})" for a in m.aliases) + f": {', '.join(m.pools)}"
        for m in config.models
    )
