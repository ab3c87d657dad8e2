"""`dualpool emulate`: serve emulated vLLM instances of one engine config, no GPU.

Each instance listens on its own port (--port, --port + 1, ...) and is driven
by the engine model in wall-clock time: --speedup 10 runs ten times faster
than the modelled GPU. An engine config vLLM would refuse to start is a
one-line error. Prints one JSON line when ready:
{"event": "ready", "ports": [...], ...}. SIGTERM or Ctrl-C: stop accepting,
let in-flight requests finish (--shutdown-grace seconds), cancel the rest,
exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from dualpool.cli.common import (
    add_catalog_args,
    add_engine_args,
    catalog_from_args,
    print_json,
    step_params_from_args,
)
from dualpool.emulator import EmulatorConfig, EmulatorServer, serve
from dualpool.tokenizers import TOKENIZERS


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "emulate",
        help="serve emulated vLLM instances (OpenAI API, metrics) driven by the engine model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_engine_args(p)
    p.add_argument(
        "--tp",
        "--tensor-parallel-size",
        dest="tp",
        type=int,
        default=None,
        help="tensor parallel size (default: the smallest at which vLLM would start)",
    )
    p.add_argument(
        "--max-model-len", type=int, default=8192, help="vLLM --max-model-len (default 8192)"
    )
    p.add_argument(
        "--max-num-seqs",
        type=int,
        default=256,
        help="vLLM --max-num-seqs: sequences in a batch (default 256)",
    )
    p.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=None,
        help="token budget per step (default max(8192, max-num-seqs))",
    )
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.9,
        help="vLLM --gpu-memory-utilization: fraction of GPU memory for weights and KV (0.9)",
    )
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8001, help="first port; 0 = ephemeral ports")
    p.add_argument("--instances", type=int, default=1, help="instances (ports port..port+N-1)")
    p.add_argument(
        "--speedup", type=float, default=1.0, help="modelled seconds per wall second (default 1)"
    )
    p.add_argument(
        "--tokenizer",
        default="llama3",
        choices=TOKENIZERS,
        help="what counts usage.prompt_tokens (default llama3; bytes: one token per byte)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the output-length draw")
    p.add_argument("--served-model-name", default=None, help="model name clients send")
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=5.0,
        help="wall seconds in-flight requests get to finish on SIGTERM (default 5)",
    )
    add_catalog_args(p)
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> EmulatorConfig:
    return EmulatorConfig(
        model=args.model,
        gpu=args.gpu,
        tensor_parallel_size=args.tp,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        gpu_memory_utilization=args.gpu_memory_utilization,
        host=args.host,
        port=args.port,
        instances=args.instances,
        speedup=args.speedup,
        tokenizer=args.tokenizer,
        seed=args.seed,
        served_model_name=args.served_model_name,
        catalog=catalog_from_args(args),
        step_params=step_params_from_args(args),
    )


def _ready(srv: EmulatorServer) -> None:
    inst = srv.instances[0]
    cfg = inst.sched.config
    print_json(
        {
            "event": "ready",
            "ports": srv.ports,
            "urls": srv.urls,
            "model": inst.model_name,
            "tensor_parallel_size": cfg.tensor_parallel_size,
            "max_model_len": cfg.max_model_len,
            "max_num_seqs": cfg.max_num_seqs,
            "max_num_batched_tokens": cfg.max_num_batched_tokens,
            "num_gpu_blocks": inst.sched.kv.num_gpu_blocks,
            "speedup": srv.config.speedup,
        }
    )
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    config = _config(args)
    server = EmulatorServer(config)  # raises InfeasibleConfigError etc. before serving
    try:
        import uvloop
    except ImportError:  # pragma: no cover - optional speed-up
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve(config, grace=args.shutdown_grace, on_ready=_ready, server=server))
    except OSError as exc:
        print(
            f"dualpool emulate: error: cannot listen on {config.host}:{config.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 2
    return 0
