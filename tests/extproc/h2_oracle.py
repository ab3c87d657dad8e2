"""An independent HTTP/2 client (h2) speaking to an ext_proc server as Envoy's gRPC
client does: the test oracle for dualpool's own transport (test_extproc_h2.py) and for
the C floor (test_extproc_c_floor.py). h2 is imported when a client is made, so a
module that imports this one can still skip its h2 tests alone when h2 is absent."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

GRPC_HEADERS = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/envoy.service.ext_proc.v3.ExternalProcessor/Process"),
    (":authority", "dualpool_extproc"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
]


class Client:
    """A blocking h2 client: what Envoy's gRPC client does, written by someone else."""

    def __init__(self, port: int, settings: dict[Any, int] | None = None) -> None:
        import h2.config
        import h2.connection

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.events: list[Any] = []
        self.flush()

    def flush(self) -> None:
        if data := self.conn.data_to_send():
            self.sock.sendall(data)

    def read_until(
        self, cond: Callable[[list[Any]], bool], limit: int = 500, ack: bool = False
    ) -> list[Any]:
        """Read until `cond(events)` (or `limit` reads, or the peer closes); `ack`: give
        back the flow-control window of every DATA frame read (tiny-window tests)."""
        import h2.events

        for _ in range(limit):
            if cond(self.events):
                break
            data = self.sock.recv(1 << 20)
            if not data:
                break
            new = self.conn.receive_data(data)
            self.events += new
            for e in new:
                if ack and isinstance(e, h2.events.DataReceived) and e.flow_controlled_length:
                    self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            self.flush()
        return self.events

    def raw_messages(self, sid: int) -> list[bytes]:
        """The gRPC messages of stream `sid` received so far (length prefixes removed)."""
        import h2.events

        raw = b"".join(
            e.data
            for e in self.events
            if isinstance(e, h2.events.DataReceived) and e.stream_id == sid
        )
        out = []
        while raw:
            assert raw[0] == 0  # not compressed
            n = int.from_bytes(raw[1:5], "big")
            out.append(raw[5 : 5 + n])
            raw = raw[5 + n :]
        return out


def ended(sid: int) -> Callable[[list[Any]], bool]:
    """A `read_until` condition: stream `sid` ended or was reset."""
    import h2.events

    return lambda evs: any(
        isinstance(e, h2.events.StreamEnded | h2.events.StreamReset) and e.stream_id == sid
        for e in evs
    )
