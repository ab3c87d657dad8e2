"""dualpool: dual-pool token-budget routing for vLLM fleets.

The public API of the pure core is re-exported here; the gateway, emulator,
simulator and planner live in their own subpackages and import from below,
never the other way round.
"""

__version__ = "0.1.0"
