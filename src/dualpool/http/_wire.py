"""Bytes on the wire shared by the server and the client: status lines, Date, limits."""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from http import HTTPStatus

__all__ = ["DATE", "ServerLimits", "date_header", "reason", "status_line"]

_STATUS_LINES: dict[int, bytes] = {}


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def status_line(status: int) -> bytes:
    """`HTTP/1.1 <status> <reason>\\r\\n`, cached per status."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {reason(status)}\r\n".encode("latin-1")
    return line


def _format_date(now: float) -> bytes:
    return b"date: " + email.utils.formatdate(int(now), usegmt=True).encode() + b"\r\n"


class _Clock:
    """The `Date` header line, refreshed by `tick()` (HttpServer's timer, <= 1 s), so
    an answer reads one attribute instead of the clock."""

    __slots__ = ("line", "second")

    def __init__(self) -> None:
        self.second = int(time.time())
        self.line = _format_date(self.second)

    def tick(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.line = _format_date(now)
        return self.line


DATE = _Clock()


def date_header() -> bytes:
    """`date: <IMF-fixdate>\r\n` (RFC 9110 6.6.1) for now."""
    return DATE.tick()


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one connection may ask of the server; each limit has its own answer.

    max_url_bytes -> 414, max_header_bytes / max_headers -> 431, max_body_bytes -> 413.
    idle_timeout: a keep-alive connection with no request in progress is closed after
    this many seconds (uvicorn, and so vLLM, closes after 5 s). head_timeout: a request
    whose head is not complete after this many seconds is answered 408 (slow clients).
    """

    max_url_bytes: int = 8 * 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_body_bytes: int = 8 * 1024 * 1024
    idle_timeout: float = 5.0
    head_timeout: float = 30.0
    max_connections: int = 0  # 0: unbounded
    max_pipeline: int = 16
