"""dualpool.http's server judged by h11: every answer must parse as RFC 9112 says."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from h11_oracle import read_answers

from dualpool.http import Exchange, HttpServer, Request, ServerLimits


class App:
    def __init__(self) -> None:
        self.seen: list[Request] = []

    def error_body(self, status: int, message: str) -> bytes:
        return json.dumps({"error": {"message": message, "code": status}}).encode()

    def handle(self, req: Request, ex: Exchange) -> Awaitable[None] | None:
        self.seen.append(req)
        if req.path == b"/text":
            ex.send(200, b"hello", content_type=b"text/plain")
        elif req.path == b"/stream":
            ex.start_stream(200, b"text/event-stream")
            ex.write(b"data: a\n\n")
            ex.end(b"data: b\n\n")
        elif req.path == b"/echo":
            ex.send(200, req.body, content_type=b"application/octet-stream")
        elif req.path == b"/slow":
            return self._slow(ex)
        elif req.path == b"/boom":
            raise RuntimeError("a bug")
        else:
            ex.send(404, b"{}")
        return None

    async def _slow(self, ex: Exchange) -> None:
        ex.start_stream(200, b"text/plain")
        for part in (b"one ", b"two ", b"three"):
            await asyncio.sleep(0.02)
            ex.write(part)
        ex.end()


Scenario = Callable[[int, App], Awaitable[Any]]


def run(scenario: Scenario, limits: ServerLimits | None = None) -> Any:
    async def main() -> Any:
        app = App()
        server = HttpServer(app, limits or ServerLimits(idle_timeout=1.0), server_name=b"t")
        port = await server.listen("127.0.0.1", 0)
        try:
            return await asyncio.wait_for(scenario(port, app), 20)
        finally:
            server.close()
            server.abort_all()
            await server.wait_closed()

    return asyncio.run(main())


async def raw(port: int, data: bytes, methods: list[bytes], **kw: Any) -> Any:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await read_answers(reader, methods, **kw)
    finally:
        writer.close()


def get(path: str, extra: str = "", version: str = "1.1", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/{version}\r\nhost: x\r\n{extra}\r\n".encode()


# ---- basics --------------------------------------------------------------------------
def test_answers_carry_a_valid_date_and_keep_the_connection_open() -> None:
    async def sc(port: int, app: App) -> None:
        answers, closed = await raw(port, get("/text") + get("/stream"), [b"GET", b"GET"])
        assert [a.status for a in answers] == [200, 200]
        assert answers[0].body == b"hello"
        assert answers[1].body == b"data: a\n\ndata: b\n\n"
        assert answers[1].headers[b"transfer-encoding"] == b"chunked"
        assert email.utils.parsedate_to_datetime(answers[0].headers[b"date"].decode())
        assert not closed

    run(sc)


def test_head_gets_the_head_of_get_and_no_body() -> None:
    async def sc(port: int, app: App) -> None:
        data = get("/text", method="HEAD") + get("/stream", method="HEAD") + get("/text")
        answers, _ = await raw(port, data, [b"HEAD", b"HEAD", b"GET"])
        assert answers[0].body == b"" and answers[0].headers[b"content-length"] == b"5"
        assert answers[1].body == b""
        assert answers[2].body == b"hello"  # the connection is still in step

    run(sc)


def test_http10_stream_is_close_delimited_not_chunked() -> None:
    async def sc(port: int, app: App) -> None:
        answers, closed = await raw(port, get("/stream", version="1.0"), [b"GET"], http10=True)
        assert b"transfer-encoding" not in answers[0].headers
        assert answers[0].body == b"data: a\n\ndata: b\n\n"
        assert closed

    run(sc)


def test_http10_keep_alive_is_said_when_kept() -> None:
    async def sc(port: int, app: App) -> None:
        data = get("/text", "connection: keep-alive\r\n", version="1.0")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        head = await asyncio.wait_for(reader.readuntil(b"hello"), 5)
        assert b"connection: keep-alive" in head.lower()
        assert b"transfer-encoding" not in head
        writer.close()

    run(sc)


# ---- pipelining and order ---------------------------------------------------------------------
def test_pipelined_requests_are_answered_in_order() -> None:
    async def sc(port: int, app: App) -> None:
        body = b"x" * 10
        post = b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n" + body
        data = get("/slow") + post + get("/text")
        answers, _ = await raw(port, data, [b"GET", b"POST", b"GET"])
        assert [a.body for a in answers] == [b"one two three", body, b"hello"]

    run(sc)


def test_100_continue_is_never_written_inside_a_previous_answer() -> None:
    async def sc(port: int, app: App) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            get("/slow")
            + b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n"
        )
        await asyncio.sleep(0.2)  # the slow stream is over; now the 100 may come
        writer.write(b"abc")
        answers, _ = await read_answers(reader, [b"GET", b"POST"])
        assert answers[0].body == b"one two three" and answers[0].informational == []
        assert answers[1].informational == [100] and answers[1].body == b"abc"
        writer.close()

    run(sc)


def test_100_continue_for_http11_only_and_413_instead_when_too_large() -> None:
    async def sc(port: int, app: App) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.0\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n")
        await asyncio.sleep(0.05)
        writer.write(b"abc")
        answers, _ = await read_answers(reader, [b"POST"], http10=True)
        assert answers[0].informational == [] and answers[0].body == b"abc"
        writer.close()
        big = b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 99999\r\nexpect: 100-continue\r\n\r\n"
        answers, closed = await raw(port, big, [b"POST"])
        assert answers[0].status == 413 and answers[0].informational == [] and closed

    run(sc, ServerLimits(max_body_bytes=1000))


def test_upgrade_is_ignored_and_the_connection_stays_http11() -> None:
    async def sc(port: int, app: App) -> None:
        up = get(
            "/text",
            "connection: upgrade\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n",
        )
        answers, closed = await raw(port, up + get("/text"), [b"GET", b"GET"])
        assert [a.status for a in answers] == [200, 200]
        assert not closed
        ws = get("/text", "connection: Upgrade\r\nupgrade: websocket\r\n")
        answers, _ = await raw(port, ws, [b"GET"])
        assert answers[0].status == 200 and answers[0].body == b"hello"
        with_body = (
            b"POST /echo HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: h2c\r\n"
            b"content-length: 2\r\n\r\nhi"
        )
        answers, closed = await raw(port, with_body, [b"POST"])
        assert answers[0].status == 400 and closed

    run(sc)


# ---- errors: in order, then close ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "status"),
    [
        # request smuggling attempts
        (
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
            400,
        ),
        (b"GET /text HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n  folded\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n-1\r\n", 400),
        (
            b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffffff\r\n",
            400,
        ),
        (
            b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
        (b"GET /text HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /text HTTP/2.0\r\nhost: x\r\n\r\n", 505),
        (b"GET /text HTTP/1.1\r\nhost: x\r\nexpect: magic\r\n\r\n", 417),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
    ],
)
def test_protocol_errors_after_the_answers_before_them(data: bytes, status: int) -> None:
    async def sc(port: int, app: App) -> None:
        answers, closed = await raw(port, get("/slow") + data, [b"GET", b"GET"])
        assert answers[0].status == 200 and answers[0].body == b"one two three"
        assert answers[1].status == status
        assert json.loads(answers[1].body)["error"]["code"] == status
        assert closed
        assert len(app.seen) == 1  # nothing after the bad request reached the app

    run(sc)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (get("/" + "a" * 9000), 414),
        (get("/text", "x-big: " + "b" * 70_000 + "\r\n"), 431),
        (get("/text", "".join(f"x-h{i}: v\r\n" for i in range(101))), 431),
        (b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2000\r\n\r\n" + b"z" * 2000, 413),
        (
            b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"3e8\r\n"
            + b"z" * 1000
            + b"\r\n"
            + b"3e8\r\n"
            + b"z" * 1000
            + b"\r\n0\r\n\r\n",
            413,
        ),
    ],
)
def test_limits(data: bytes, status: int) -> None:
    async def sc(port: int, app: App) -> None:
        answers, closed = await raw(port, data, [b"GET"])
        assert answers[0].status == status and closed

    run(sc, ServerLimits(max_body_bytes=1500))


def test_chunked_request_with_extensions_and_trailers() -> None:
    async def sc(port: int, app: App) -> None:
        data = (
            b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            b"3;name=v\r\nabc\r\n2\r\nde\r\n0\r\nx-trailer: 1\r\n\r\n"
        ) + get("/text")
        answers, closed = await raw(port, data, [b"POST", b"GET"])
        assert answers[0].body == b"abcde" and answers[1].body == b"hello" and not closed

    run(sc)


def test_a_handler_bug_is_logged_and_answered_500(caplog: pytest.LogCaptureFixture) -> None:
    async def sc(port: int, app: App) -> None:
        answers, closed = await raw(port, get("/boom"), [b"GET"])
        assert answers[0].status == 500 and closed

    with caplog.at_level(logging.ERROR, logger="dualpool.http"):
        run(sc)
    assert any("a bug" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_idle_keep_alive_connection_is_closed_after_the_timeout() -> None:
    async def sc(port: int, app: App) -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/text"))
        await read_answers(reader, [b"GET"])
        t0 = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # EOF: closed by the server
        writer.close()
        return asyncio.get_running_loop().time() - t0

    waited = run(sc, ServerLimits(idle_timeout=0.3))
    assert waited >= 0.25


def test_slow_head_gets_408() -> None:
    async def sc(port: int, app: App) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /text HTTP/1.1\r\nhost: x\r\n")  # never finished
        answers, closed = await read_answers(reader, [b"GET"])
        assert answers[0].status == 408 and closed
        writer.close()

    run(sc, ServerLimits(head_timeout=0.3))


def test_connection_limit_answers_503() -> None:
    async def sc(port: int, app: App) -> None:
        _r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.05)
        answers, closed = await raw(port, get("/text"), [b"GET"])
        assert answers[0].status == 503 and closed
        w1.close()

    run(sc, ServerLimits(max_connections=1))


def test_a_body_that_stops_arriving_gets_408() -> None:
    async def sc(port: int, app: App) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
        answers, closed = await read_answers(reader, [b"POST"])
        assert answers[0].status == 408 and closed
        writer.close()

    run(sc, ServerLimits(idle_timeout=0.3))
