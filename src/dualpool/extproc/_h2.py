"""A small HTTP/2 (h2c) gRPC server for exactly one method: Envoy's ext_proc stream.

Why: grpcio costs about a millisecond of CPU per ext_proc stream in Python (its
core, the completion queue, the asyncio bridge), ten times dualpool's own work
(docs/envoy.md, Overhead). Envoy only ever calls one method on this port,
`envoy.service.ext_proc.v3.ExternalProcessor/Process`, over one long-lived HTTP/2
connection per worker, so the server needs only this:

    connection  preface ─► SETTINGS (ours: big windows, big frames) + ACK of theirs
    HEADERS     a new stream = one ext_proc Process call (the header block is not
                decoded: every stream on this port is that call; HPACK state only
                matters to a decoder, so skipping blocks is safe)
    DATA        gRPC length-prefixed messages (serialized ProcessingRequests) ─►
                processor.answer ─► its serialized answers (0..n), in one DATA frame;
                everything for the read goes out in one write at its end
    END_STREAM  from Envoy, or nothing more to answer ─► trailers `grpc-status: 0`
                with the last answer; a stream never answered (the observer's) ends
                trailers-only, held for the next write (at most _LAZY_END);
                RST_STREAM ─► stream cancelled
    PING        ─► PING ACK;  WINDOW_UPDATE ─► send windows;  GOAWAY / lost ─► all cancelled

Flow control is kept both ways: what we receive is granted back in batches, what we
send waits for Envoy's windows. Frames larger than we announced, a bad preface or a
compressed message (never configured in Envoy) end the connection with GOAWAY.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["H2Connection", "WireProcessor", "serve_h2"]

log = logging.getLogger("dualpool.extproc")


class WireProcessor(Protocol):
    """What the server needs of a processor: streams in, serialized messages both ways.

    `open` returns the stream's state (its `complete` attribute set: nothing more to
    answer, the server ends the stream); `answer` takes one serialized
    ProcessingRequest and returns the serialized ProcessingResponses it gets (0..n);
    `close` is called once per stream, however it ended."""

    def open(self) -> Any: ...

    def answer(self, st: Any, message: bytes) -> Sequence[bytes]: ...

    def close(self, st: Any) -> None: ...


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Frame types (RFC 9113 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# Settings ids.
S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE = 0x3, 0x4, 0x5
# Errors.
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FRAME_SIZE_ERROR = 0x0, 0x1, 0x2, 0x6

MAX_WINDOW = (1 << 31) - 1
# Largest frame we accept (a buffered request body of megabytes then takes few frames).
RECV_MAX_FRAME = 1 << 20
# Received bytes granted back to Envoy once this many are consumed.
_GRANT_EVERY = 1 << 24


_HEAD = struct.Struct(">IBI")
_SID = struct.Struct(">I")  # 24-bit length and 8-bit type as one word, flags, stream id


def _frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack(len(payload) << 8 | ftype, flags, sid) + payload


def _settings(*pairs: tuple[int, int]) -> bytes:
    return _frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


# HPACK (RFC 7541) blocks we send, encoded once: `:status: 200` (static index 8),
# `content-type: application/grpc` (literal, name = static index 31, not indexed),
# and the trailers `grpc-status: 0` / an error (literal, new name, not indexed).
_RESPONSE_HEADERS = b"\x88" + b"\x0f\x10" + b"\x10application/grpc"


def _literal(name: bytes, value: bytes) -> bytes:
    def string(b: bytes) -> bytes:
        n = len(b)
        if n < 127:
            return bytes((n,)) + b
        out = [127]
        n -= 127
        while n >= 128:
            out.append(n % 128 + 128)
            n //= 128
        out.append(n)
        return bytes(out) + b

    return b"\x00" + string(name) + string(value)


_TRAILERS_OK = _literal(b"grpc-status", b"0")
# A gRPC "Trailers-Only" response: the status in the one header block (nothing sent).
_TRAILERS_ONLY = _RESPONSE_HEADERS + _TRAILERS_OK
# A stream end held for the next write waits at most this long (seconds).
_LAZY_END = 0.01
_PREFIX = struct.Struct(">BI")


def _prefixed(message: bytes) -> bytes:
    """A gRPC message: uncompressed flag, 4-byte length, the message."""
    return _PREFIX.pack(0, len(message)) + message


class _Stream:
    __slots__ = ("buf", "ended", "ex", "headers_sent", "pending", "sid", "window")

    def __init__(self, sid: int, ex: Any, window: int) -> None:
        self.sid = sid
        self.ex = ex
        self.buf = bytearray()
        self.window = window
        # DATA payloads waiting for send window, then the trailers (None: not yet).
        self.pending: list[bytes] = []
        self.ended = False
        self.headers_sent = False


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection from Envoy carrying ext_proc streams."""

    def __init__(self, processor: WireProcessor, connections: set[H2Connection]) -> None:
        self.proc = processor
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.inbuf = bytearray()
        self.preface_ok = False
        self.streams: dict[int, _Stream] = {}
        self.last_sid = 0
        self.peer_window = 65535  # Envoy's initial stream window until its SETTINGS
        self.peer_max_frame = 16384
        self.conn_window = 65535  # what we may still send on the connection
        self.consumed = 0
        self.in_headers: int | None = None  # a header block continues (CONTINUATION)
        self.out: list[bytes] = []
        # Ends of streams nothing was answered on, written with the next write (or
        # after _LAZY_END): see _flush.
        self.lazy: list[bytes] = []
        self._lazy_at: asyncio.TimerHandle | None = None
        self.closed = False

    # ---- asyncio ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        t: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport = t
        self.connections.add(self)
        t.write(
            _settings(
                (S_MAX_CONCURRENT_STREAMS, 1 << 16),
                (S_INITIAL_WINDOW_SIZE, MAX_WINDOW),
                (S_MAX_FRAME_SIZE, RECV_MAX_FRAME),
            )
            + _frame(WINDOW_UPDATE, 0, 0, (MAX_WINDOW - 65535).to_bytes(4, "big"))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._lazy_at is not None:
            self._lazy_at.cancel()
            self._lazy_at = None
        self.connections.discard(self)
        streams, self.streams = self.streams, {}
        for st in streams.values():
            self.proc.close(st.ex)

    def data_received(self, data: bytes) -> None:
        buf: bytes | bytearray
        if self.preface_ok and not self.inbuf:
            # The usual case: whole frames in one read, parsed from the bytes received
            # (one copy less); a partial frame at the end is kept in inbuf.
            buf = data
        else:
            buf = self.inbuf
            buf += data
        if not self.preface_ok:
            assert isinstance(buf, bytearray)
            if len(buf) < len(PREFACE):
                return
            if bytes(buf[: len(PREFACE)]) != PREFACE:
                self._goaway(PROTOCOL_ERROR)
                return
            del buf[: len(PREFACE)]
            self.preface_ok = True
        pos = 0
        end = len(buf)
        try:
            while end - pos >= 9:
                n = buf[pos] << 16 | buf[pos + 1] << 8 | buf[pos + 2]
                if n > RECV_MAX_FRAME:
                    self._goaway(FRAME_SIZE_ERROR)
                    return
                if end - pos < 9 + n:
                    break
                ftype = buf[pos + 3]
                flags = buf[pos + 4]
                sid = _SID.unpack_from(buf, pos + 5)[0] & 0x7FFFFFFF
                payload = bytes(buf[pos + 9 : pos + 9 + n])
                pos += 9 + n
                if ftype == DATA and self.in_headers is None:
                    self._data(flags, sid, payload)
                else:
                    self._frame_received(ftype, flags, sid, payload)
                if self.closed:
                    return
        finally:
            if buf is data:
                if pos < len(data):
                    self.inbuf += data[pos:]
            elif pos:
                del self.inbuf[:pos]
            self._write()

    # ---- frames in --------------------------------------------------------------------
    def _frame_received(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if self.in_headers is not None and ftype != CONTINUATION:
            self._goaway(PROTOCOL_ERROR)
            return
        if ftype == DATA:
            self._data(flags, sid, payload)
        elif ftype == HEADERS:
            self._headers(flags, sid)
        elif ftype == CONTINUATION:
            if self.in_headers != sid:
                self._goaway(PROTOCOL_ERROR)
                return
            if flags & END_HEADERS:
                self.in_headers = None
        elif ftype == RST_STREAM:
            st = self.streams.pop(sid, None)
            if st is not None:
                self.proc.close(st.ex)
        elif ftype == SETTINGS:
            if not flags & ACK:
                self._settings_received(payload)
                self.out.append(_frame(SETTINGS, ACK, 0))
        elif ftype == PING:
            if not flags & ACK:
                self.out.append(_frame(PING, ACK, 0, payload))
        elif ftype == WINDOW_UPDATE:
            inc = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            if sid == 0:
                self.conn_window += inc
                for st in list(self.streams.values()):
                    self._flush(st)
            else:
                st = self.streams.get(sid)
                if st is not None:
                    st.window += inc
                    self._flush(st)
        elif ftype == GOAWAY:
            # Envoy is going away: streams it still has open end with the connection.
            pass
        elif ftype == PUSH_PROMISE:
            self._goaway(PROTOCOL_ERROR)
        # PRIORITY and unknown frame types are ignored (RFC 9113 4.1, 5.3.2).

    def _settings_received(self, payload: bytes) -> None:
        for i in range(0, len(payload) - 5, 6):
            key, value = struct.unpack_from(">HI", payload, i)
            if key == S_INITIAL_WINDOW_SIZE:
                delta = value - self.peer_window
                self.peer_window = value
                for st in self.streams.values():
                    st.window += delta
            elif key == S_MAX_FRAME_SIZE:
                self.peer_max_frame = value

    def _headers(self, flags: int, sid: int) -> None:
        if not flags & END_HEADERS:
            self.in_headers = sid
        if sid in self.streams:
            return  # trailers from Envoy: ext_proc sends none; nothing to do
        if sid % 2 == 0 or sid <= self.last_sid:
            self._goaway(PROTOCOL_ERROR)
            return
        self.last_sid = sid
        st = _Stream(sid, self.proc.open(), self.peer_window)
        self.streams[sid] = st
        if flags & END_STREAM:
            self._end(st)

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        self.consumed += len(payload)
        if self.consumed >= _GRANT_EVERY:
            # Stream windows start at 2^31 - 1 and no stream reads that much; the
            # connection's is granted back as it is used.
            self.out.append(_frame(WINDOW_UPDATE, 0, 0, self.consumed.to_bytes(4, "big")))
            self.consumed = 0
        st = self.streams.get(sid)
        if st is None or st.ended:
            return  # a stream we reset or finished: its late data is dropped
        if flags & PADDED:
            pad = payload[0]
            payload = payload[1 : len(payload) - pad]
        buf: bytes | bytearray
        if st.buf:
            buf = st.buf
            buf += payload
        else:
            buf = payload  # the usual case: whole messages in the frame
        pos = 0
        end = len(buf)
        while end - pos >= 5:
            if buf[pos]:
                self._goaway(PROTOCOL_ERROR)  # compressed: never configured in Envoy
                return
            n = _SID.unpack_from(buf, pos + 1)[0]
            if end - pos < 5 + n:
                break
            message = bytes(buf[pos + 5 : pos + 5 + n])
            pos += 5 + n
            try:
                answers = self.proc.answer(st.ex, message)
            except Exception:
                log.exception("ext_proc message failed")
                self._reset(st, INTERNAL_ERROR)
                return
            if answers:
                # Every answer to this message in one DATA frame (gRPC messages may share
                # one): fewer frames for Envoy to parse, one write for all.
                self._send(st, b"".join([_prefixed(a) for a in answers]))
            if st.ex.complete:
                # Nothing more to answer: our trailers go with the last answer; what
                # Envoy still sends on this stream is dropped.
                st.buf.clear()
                self._end(st)
                return
        if buf is st.buf:
            del st.buf[:pos]
        elif pos < end:
            st.buf += buf[pos:]
        if flags & END_STREAM:
            self._end(st)

    # ---- frames out -------------------------------------------------------------------
    def _send(self, st: _Stream, payload: bytes) -> None:
        """gRPC length-prefixed messages onto the stream (as send windows allow)."""
        if not st.headers_sent:
            st.headers_sent = True
            self.out.append(_frame(HEADERS, END_HEADERS, st.sid, _RESPONSE_HEADERS))
        st.pending.append(payload)
        self._flush(st)

    def _end(self, st: _Stream) -> None:
        """Envoy half-closed (or we have nothing more to answer): the trailers go out
        once everything is sent."""
        st.ended = True
        self._flush(st)

    def _flush(self, st: _Stream) -> None:
        out = self.out
        pending = st.pending
        while pending:
            data = pending[0]
            room = min(self.conn_window, st.window, self.peer_max_frame)
            if room <= 0:
                return
            chunk = data[:room]
            if len(chunk) < len(data):
                pending[0] = data[len(chunk) :]
            else:
                pending.pop(0)
            self.conn_window -= len(chunk)
            st.window -= len(chunk)
            out.append(_frame(DATA, 0, st.sid, chunk))
        if st.ended and self.streams.get(st.sid) is st:
            del self.streams[st.sid]
            self.proc.close(st.ex)
            if st.headers_sent:
                out.append(_frame(HEADERS, END_HEADERS | END_STREAM, st.sid, _TRAILERS_OK))
                return
            # Nothing was answered (the observer's streams): a trailers-only response,
            # held for the next write. Written now, it would wake Envoy (and Envoy's
            # RST_STREAM would wake us) just as Envoy forwards the answer to the client
            # on the core we share; with the next route answer it costs neither.
            self.lazy.append(_frame(HEADERS, END_HEADERS | END_STREAM, st.sid, _TRAILERS_ONLY))
            if self._lazy_at is None:
                self._lazy_at = asyncio.get_running_loop().call_later(_LAZY_END, self._write_lazy)

    def _reset(self, st: _Stream, code: int) -> None:
        self.out.append(_frame(RST_STREAM, 0, st.sid, code.to_bytes(4, "big")))
        if self.streams.pop(st.sid, None) is not None:
            self.proc.close(st.ex)

    def _goaway(self, code: int) -> None:
        log.warning("ext_proc connection ended: HTTP/2 error %d (GOAWAY)", code)
        if self.transport is not None and not self.closed:
            self.out.append(
                _frame(GOAWAY, 0, 0, self.last_sid.to_bytes(4, "big") + code.to_bytes(4, "big"))
            )
            self._write()
            self.transport.close()
        self.closed = True

    def _write(self) -> None:
        out = self.out
        if out:
            if self.lazy:
                out += self.lazy
                self.lazy.clear()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(b"".join(out))
            out.clear()

    def _write_lazy(self) -> None:
        """Nothing else was written in _LAZY_END: the held stream ends go out alone."""
        self._lazy_at = None
        if self.lazy and not self.closed:
            self.out += self.lazy
            self.lazy.clear()
            self._write()

    def close(self) -> None:
        """Close the connection, after the stream ends still held (see _flush)."""
        if self._lazy_at is not None:
            self._lazy_at.cancel()
        self._write_lazy()
        if self.transport is not None:
            self.transport.close()

    def shutdown(self) -> None:
        """Graceful close: tell Envoy to open no new streams here."""
        if self.transport is not None and not self.closed:
            self.out.append(
                _frame(GOAWAY, 0, 0, self.last_sid.to_bytes(4, "big") + NO_ERROR.to_bytes(4, "big"))
            )
            self._write()


async def serve_h2(
    processor: WireProcessor, host: str, port: int
) -> tuple[asyncio.Server, set[H2Connection]]:
    """Listen for Envoy's ext_proc connections (h2c, prior knowledge)."""
    loop = asyncio.get_running_loop()
    connections: set[H2Connection] = set()
    server = await loop.create_server(
        lambda: H2Connection(processor, connections), host, port, reuse_address=True
    )
    return server, connections
