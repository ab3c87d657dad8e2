"""Emulated vLLM instances: the engine model behind vLLM's HTTP API, no GPU.

Each instance runs `dualpool.engine.Scheduler` in wall-clock time (scaled by
`speedup`) and answers the OpenAI endpoints the way vLLM does: exact prompt
token counts from a real tokenizer, SSE chunks at the modelled pace, vLLM's
400 for over-length requests, queueing and preemption when KV runs out, and
`/metrics` with vLLM's names.

    _config.py    EmulatorConfig (the `dualpool emulate` flags, validated)
    (HTTP: dualpool.http, shared with the gateway)
    _openai.py    request parsing, vLLM's response/chunk/error shapes, filler text
    _metrics.py   per-instance Prometheus registry with vLLM's names
    _instance.py  EmulatedInstance: engine loop + endpoints
    _server.py    EmulatorServer (N instances, one process), serve() with SIGTERM
    testing.py    EmulatorThread / EmulatorProcess helpers for other tests
"""

from dualpool.emulator._config import EmulatorConfig
from dualpool.emulator._instance import EmulatedInstance
from dualpool.emulator._openai import OUTPUT_TOKENS_HEADER
from dualpool.emulator._server import EmulatorServer, serve

__all__ = [
    "OUTPUT_TOKENS_HEADER",
    "EmulatedInstance",
    "EmulatorConfig",
    "EmulatorServer",
    "serve",
]
