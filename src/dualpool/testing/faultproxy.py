"""A small TCP fault proxy for loopback reliability tests: resets, delays, half-closes,
garbage.

    proxy = FaultProxy(("127.0.0.1", backend_port), Faults(reset=0.02, garbage=0.01))
    port = await proxy.start()          # listens on 127.0.0.1:port, forwards upstream
    proxy.faults = Faults()             # change the faults at any time (new connections)
    proxy.counts                        # faults injected so far, by kind

Each request the client sends (each chunk it writes: one request at a time on a
keep-alive connection) draws at most one fault (seeded RNG) for the answer:

    reset       RST to the client at once (SO_LINGER 0), nothing forwarded
    reset_mid   RST after the first answer bytes were forwarded (mid-answer)
    delay       the answer held `delay_s` seconds before it is forwarded
    half_close  the request forwarded, then FIN to the client with no answer
    garbage     random bytes instead of the answer, then close

Loopback only: both the listening and the upstream address must be 127.0.0.1 / ::1.
`python -m dualpool.testing.faultproxy --upstream 127.0.0.1:8001 --reset 0.05` runs one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import socket
import struct
import sys
from collections import Counter
from dataclasses import dataclass, fields

__all__ = ["FaultProxy", "Faults"]

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
_KINDS = ("reset", "reset_mid", "delay", "half_close", "garbage")


@dataclass(frozen=True, slots=True)
class Faults:
    """Probability of each fault per connection (sum <= 1), and the delay length."""

    reset: float = 0.0
    reset_mid: float = 0.0
    delay: float = 0.0
    half_close: float = 0.0
    garbage: float = 0.0
    delay_s: float = 0.5

    def __post_init__(self) -> None:
        total = sum(getattr(self, k) for k in _KINDS)
        if any(getattr(self, k) < 0 for k in _KINDS) or total > 1.0 + 1e-9:
            raise ValueError(f"fault probabilities must be >= 0 and sum to <= 1, got {total}")
        if self.delay_s < 0:
            raise ValueError("delay_s must be >= 0")

    def draw(self, rng: random.Random) -> str | None:
        x = rng.random()
        for k in _KINDS:
            p = getattr(self, k)
            if x < p:
                return k
            x -= p
        return None


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """Forwards 127.0.0.1:port to an upstream loopback address, injecting faults."""

    def __init__(
        self,
        upstream: tuple[str, int],
        faults: Faults | None = None,
        *,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if upstream[0] not in _LOOPBACK or host not in _LOOPBACK:
            raise ValueError("the fault proxy works on loopback addresses only")
        self.upstream = upstream
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.host = host
        self.port = port
        self.counts: Counter[str] = Counter()
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self._serve(reader, writer)
        except (OSError, RuntimeError, asyncio.IncompleteReadError):
            pass  # the client or the upstream went away (or a write after our FIN)
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward both ways; each chunk the client sends (a request, on a keep-alive
        connection one after another) draws a fault for the answer that follows."""
        first = await reader.read(65536)
        if not first:
            return
        fault = self.faults.draw(self.rng)
        if fault == "reset":
            self.counts[fault] += 1
            _rst(writer)
            return
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            _rst(writer)  # nothing listening upstream: the client sees a reset
            return
        state: dict[str, str | None] = {"fault": fault}
        try:
            if fault == "half_close":
                await self._half_close(first, up_w, reader, writer)
                return
            up_w.write(first)
            pump = asyncio.ensure_future(self._pump_up(reader, up_w, writer, state))
            try:
                await self._pump_down(up_r, writer, state)
            finally:
                pump.cancel()
        finally:
            up_w.transport.abort()

    async def _half_close(
        self,
        data: bytes,
        up_w: asyncio.StreamWriter,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        up_w.write(data)
        self.counts["half_close"] += 1
        with contextlib.suppress(OSError):
            writer.write_eof()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(65536), 5.0)  # until the client closes

    async def _pump_up(
        self,
        reader: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
        writer: asyncio.StreamWriter,
        state: dict[str, str | None],
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    with contextlib.suppress(OSError):
                        up_w.write_eof()
                    return
                fault = self.faults.draw(self.rng)
                if fault == "reset":
                    self.counts[fault] += 1
                    _rst(writer)
                    up_w.transport.abort()
                    return
                if fault == "half_close":
                    await self._half_close(data, up_w, reader, writer)
                    up_w.transport.abort()
                    return
                state["fault"] = fault
                up_w.write(data)
                await up_w.drain()
        except (OSError, RuntimeError, asyncio.CancelledError):
            return

    async def _pump_down(
        self,
        up_r: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        state: dict[str, str | None],
    ) -> None:
        while True:
            data = await up_r.read(65536)
            if not data:
                return
            fault, state["fault"] = state["fault"], None
            if fault == "garbage":
                self.counts[fault] += 1
                writer.write(self.rng.randbytes(len(data)))
                await writer.drain()
                return
            if fault == "delay":
                self.counts[fault] += 1
                await asyncio.sleep(self.faults.delay_s)
            if fault == "reset_mid":
                self.counts[fault] += 1
                writer.write(data[: max(1, len(data) // 2)])
                await writer.drain()
                _rst(writer)
                return
            writer.write(data)
            await writer.drain()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--upstream", required=True, help="127.0.0.1:PORT to forward to")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    for f in fields(Faults):
        ap.add_argument("--" + f.name.replace("_", "-"), type=float, default=f.default)
    args = ap.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    try:
        faults = Faults(**{f.name: getattr(args, f.name) for f in fields(Faults)})
        proxy = FaultProxy((host, int(port)), faults, seed=args.seed, port=args.port)
    except ValueError as exc:
        print(f"faultproxy: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        print(f"ready {await proxy.start()}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
