"""dualpool.http's upstream client against an h11 backend (and raw sockets for faults)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import pytest

from dualpool.http import (
    ClosedBeforeResponse,
    ClosedMidResponse,
    ConnectError,
    ConnectionPool,
    NotSent,
    ProtocolError,
    ResponseTooLarge,
    UpstreamTimeout,
    fetch,
)

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def with_backend(script: Script, test: Callable[[int], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        server = await asyncio.start_server(script, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await asyncio.wait_for(test(port), 20)
        finally:
            server.close()

    return asyncio.run(main())


def h11_backend(*events_per_request: list[Any]) -> Script:
    """An h11 server: for the n-th request on a connection, send events_per_request[n]."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(our_role=h11.SERVER)
        for events in events_per_request:
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    data = await reader.read(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(ev, h11.EndOfMessage):
                    break
            for ev in events:
                if ev == "close":
                    writer.close()
                    return
                writer.write(conn.send(ev) or b"")
            await writer.drain()
            if conn.our_state is h11.MUST_CLOSE:
                writer.close()
                return
            conn.start_next_cycle()
        await reader.read()

    return script


def ok(body: bytes, *extra: tuple[bytes, bytes]) -> list[Any]:
    return [
        h11.Response(status_code=200, headers=[(b"content-length", b"%d" % len(body)), *extra]),
        h11.Data(data=body),
        h11.EndOfMessage(),
    ]


def test_interim_1xx_answers_are_skipped() -> None:
    events = [
        h11.InformationalResponse(status_code=100, headers=[]),
        h11.InformationalResponse(status_code=103, headers=[(b"link", b"</a>; rel=preload")]),
        *ok(b"final"),
    ]

    async def t(port: int) -> None:
        resp = await ConnectionPool("127.0.0.1", port).request("GET", "/")
        assert (resp.status, resp.body) == (200, b"final")

    with_backend(h11_backend(events), t)


def test_chunked_with_trailers_and_keep_alive_reuse() -> None:
    chunked = [
        h11.Response(status_code=200, headers=[(b"transfer-encoding", b"chunked")]),
        h11.Data(data=b"ab"),
        h11.Data(data=b"cd"),
        h11.EndOfMessage(headers=[(b"x-checksum", b"1")]),
    ]

    async def t(port: int) -> None:
        pool = ConnectionPool("127.0.0.1", port)
        seen: list[bytes] = []
        r1 = await pool.request("GET", "/", on_chunk=lambda d, _t: seen.append(d))
        assert b"".join(seen) == b"abcd" and r1.t_first >= r1.t_sent
        assert len(pool.idle) == 1
        r2 = await pool.request("GET", "/")
        assert r2.body == b"again" and len(pool.idle) == 1  # the same connection

    with_backend(h11_backend(chunked, ok(b"again")), t)


def test_http10_and_close_delimited_bodies_are_read_to_eof() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    async def t(port: int) -> None:
        status, body = await fetch("127.0.0.1", port, "/", 2.0)
        assert (status, body) == (200, b"until the end")

    with_backend(script, t)


def test_head_answer_with_content_length_has_no_body() -> None:
    async def t(port: int) -> None:
        pool = ConnectionPool("127.0.0.1", port)
        resp = await pool.request("HEAD", "/")
        assert resp.status == 200 and resp.body == b"" and resp.header(b"content-length") == b"5"

    head = [
        h11.Response(status_code=200, headers=[(b"content-length", b"5")]),
        h11.EndOfMessage(),
    ]
    with_backend(h11_backend(head), t)


def test_refused_is_connect_error() -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectError):
            await ConnectionPool("127.0.0.1", port).request("GET", "/")

    asyncio.run(main())


def test_reset_before_and_after_the_first_byte() -> None:
    async def before(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()

    async def after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        writer.transport.abort()

    async def t_before(port: int) -> None:
        with pytest.raises(ClosedBeforeResponse) as err:
            await ConnectionPool("127.0.0.1", port).request("GET", "/")
        assert not err.value.reused and not err.value.sent_nothing

    async def t_after(port: int) -> None:
        with pytest.raises(ClosedMidResponse):
            await ConnectionPool("127.0.0.1", port).request("GET", "/")

    with_backend(before, t_before)
    with_backend(after, t_after)


def test_stale_keep_alive_connection_is_retried_once_fresh() -> None:
    # The backend closes each connection after one answer without saying so.
    async def t(port: int) -> None:
        pool = ConnectionPool("127.0.0.1", port)
        assert (await pool.request("GET", "/")).body == b"one"
        await asyncio.sleep(0.05)
        assert (await pool.request("GET", "/")).body == b"one"  # on a fresh connection

    with_backend(h11_backend(ok(b"one"), ["close"]), t)


def test_send_on_a_closed_connection_raises_not_sent() -> None:
    async def t(port: int) -> None:
        pool = ConnectionPool("127.0.0.1", port)
        conn = await pool.connect()
        conn.close()

        class Sink:
            def on_head(self, *a: Any) -> None: ...
            def on_body(self, *a: Any) -> None: ...
            def on_complete(self, *a: Any) -> None: ...
            def on_error(self, *a: Any) -> None: ...

        with pytest.raises(NotSent) as err:
            conn.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", Sink())
        assert err.value.sent_nothing

    with_backend(h11_backend(ok(b"")), t)


def test_timeout_and_protocol_error_and_size_bound() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()

    async def t_silent(port: int) -> None:
        with pytest.raises(UpstreamTimeout) as err:
            await ConnectionPool("127.0.0.1", port).request("GET", "/", timeout=0.2)
        assert err.value.first_byte

    async def t_garbage(port: int) -> None:
        with pytest.raises(ProtocolError):
            await ConnectionPool("127.0.0.1", port).request("GET", "/")

    async def t_big(port: int) -> None:
        with pytest.raises(ResponseTooLarge):
            await ConnectionPool("127.0.0.1", port).request("GET", "/", max_body=10)

    with_backend(silent, t_silent)
    with_backend(garbage, t_garbage)
    with_backend(h11_backend(ok(b"x" * 100)), t_big)


def test_stream_as_an_async_iterator_with_arrival_times() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(our_role=h11.SERVER)
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await reader.read(65536)
                if not data:
                    return
                conn.receive_data(data)
                continue
            if not isinstance(ev, h11.EndOfMessage):
                continue
            head = h11.Response(status_code=200, headers=[(b"transfer-encoding", b"chunked")])
            writer.write(conn.send(head) or b"")
            for piece in (b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"):
                writer.write(conn.send(h11.Data(data=piece)) or b"")
                await writer.drain()
                await asyncio.sleep(0.02)
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
            conn.start_next_cycle()

    async def t(port: int) -> None:
        pool = ConnectionPool("127.0.0.1", port)
        async with pool.stream("POST", "/v1/completions", body=b"{}") as resp:
            assert resp.status == 200 and resp.t_head >= resp.t_sent
            pieces = [(d, t) async for d, t in resp]
        assert b"".join(d for d, _ in pieces) == b"data: 1\n\ndata: 2\n\ndata: 3\n\n"
        times = [t for _, t in pieces]
        assert times == sorted(times) and times[-1] - times[0] >= 0.03
        assert len(pool.idle) == 1  # complete: the connection went back
        async with pool.stream("POST", "/v1/completions", body=b"{}") as resp:
            async for _ in resp:
                break  # leave early: the connection is dropped, not reused
        assert len(pool.idle) == 0

    with_backend(script, t)


def test_json_body_bounds() -> None:
    from dualpool.http import BadJson, parse_json_body

    assert parse_json_body(b'{"a": [1, 2.5, "' + b"7" * 500 + b'"]}')["a"][1] == 2.5
    assert parse_json_body(b'{"seed": 18446744073709551615}')["seed"] == 2**64 - 1
    for bad in (
        b"[" * 100 + b"]" * 100,
        b'{"max_tokens": ' + b"9" * 65 + b"}",
        b'{"t": 1.' + b"5" * 70 + b"}",
        b'{"max_tokens": ' + b"9" * 5000 + b"}",
        b"\xff",
        b"{",
    ):
        with pytest.raises(BadJson):
            parse_json_body(bad)
