"""`dualpool extproc`: dualpool's routing as an Envoy external processor (gRPC).

dualpool extproc --config fleet.yaml                    # ext_proc on 127.0.0.1:9002
dualpool extproc --config fleet.yaml --endpoint-picker  # also name the backend (Gateway
                                                        # API Inference Extension protocol)
dualpool extproc --config fleet.yaml --transport native # dualpool's own HTTP/2 server:
                                                        # a third of grpcio's CPU
dualpool extproc --check --config fleet.yaml            # validate and exit (0 ok, 2 error)

Envoy routes on the x-dualpool-pool header this sets; see deploy/envoy/envoy.yaml and
docs/envoy.md. The fleet YAML is the gateway's; its `listen:` is the side HTTP port
(/metrics, /health, /ready, /admin).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from dualpool.errors import ConfigError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "extproc",
        help="run the routing as an Envoy external processor (ext_proc gRPC service)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="fleet YAML file (see docs/gateway.md)")
    p.add_argument("--check", action="store_true", help="validate the config and exit")
    p.add_argument("--grpc-host", default="127.0.0.1", help="gRPC listen address")
    p.add_argument("--grpc-port", type=int, default=9002, help="gRPC listen port (0: any free)")
    p.add_argument("--http-host", help="side HTTP address (overrides listen.host)")
    p.add_argument("--http-port", type=int, help="side HTTP port (overrides listen.port)")
    p.add_argument(
        "--endpoint-picker",
        action="store_true",
        help="also choose the backend (least outstanding) and name it in "
        "x-gateway-destination-endpoint and metadata envoy.lb",
    )
    p.add_argument(
        "--transport",
        choices=("grpcio", "native"),
        default="grpcio",
        help="gRPC server: grpcio (the library) or native (dualpool's own HTTP/2 server "
        "for the one ext_proc method; same messages, less CPU); default grpcio",
    )
    p.add_argument(
        "--ready-line",
        action="store_true",
        help="print one JSON line with the bound ports once serving",
    )
    p.set_defaults(func=run)


def _port(value: int | None, flag: str) -> int | None:
    if value is not None and not 0 <= value <= 65535:
        raise ConfigError(flag, f"must be in [0, 65535], got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    from dualpool.gateway import load_config

    config = load_config(args.config)
    http_port = _port(args.http_port, "--http-port")
    grpc_port = _port(args.grpc_port, "--grpc-port")
    assert grpc_port is not None
    if http_port is not None:
        config = dataclasses.replace(config, port=http_port)
    if args.http_host is not None:
        config = dataclasses.replace(config, host=args.http_host)
    if args.check:
        from dualpool.cli.serve import describe_models

        models = describe_models(config)
        pools = ", ".join(p.name for p in config.pools)
        print(f"config ok: pools {pools}" + (f"; models {models}" if models else ""))
        return 0
    try:
        from dualpool.extproc import ExtProcServer
        from dualpool.extproc import run as serve
    except ImportError as exc:
        raise ConfigError(
            "extproc", f"needs the extproc extra (pip install 'dualpool[extproc]'): {exc}"
        ) from None
    server = ExtProcServer(
        config,
        grpc_host=args.grpc_host,
        grpc_port=grpc_port,
        endpoint_picker=args.endpoint_picker,
        transport=args.transport,
    )
    return serve(server, ready_line=args.ready_line)
