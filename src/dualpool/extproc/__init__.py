"""dualpool's routing as an Envoy external processor (ext_proc v3).

`dualpool extproc --config fleet.yaml` runs it; see docs/envoy.md and
deploy/envoy/envoy.yaml. Needs the `extproc` extra (grpcio, xds-protos).
"""

from dualpool.extproc._processor import (
    DESTINATION_HEADER,
    LB_NAMESPACE,
    META_NAMESPACE,
    POOL_HEADER,
    STRIP_HEADER,
    ExtProcessor,
)
from dualpool.extproc._server import ExtProcServer, run

__all__ = [
    "DESTINATION_HEADER",
    "LB_NAMESPACE",
    "META_NAMESPACE",
    "POOL_HEADER",
    "STRIP_HEADER",
    "ExtProcServer",
    "ExtProcessor",
    "run",
]
