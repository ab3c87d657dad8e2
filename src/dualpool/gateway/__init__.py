"""The dual-pool HTTP gateway: an OpenAI-compatible router in front of vLLM pools.

`dualpool serve --config fleet.yaml` runs it; see docs/gateway.md.
"""

from dualpool.gateway._config import GatewayConfig, PoolConfig, load_config, parse_config
from dualpool.gateway._gateway import Gateway
from dualpool.gateway._server import GatewayServer, run
from dualpool.gateway._sse import SseRelay, usage_from_body

__all__ = [
    "Gateway",
    "GatewayConfig",
    "GatewayServer",
    "PoolConfig",
    "SseRelay",
    "load_config",
    "parse_config",
    "run",
    "usage_from_body",
]
