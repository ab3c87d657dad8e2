"""What can go wrong talking to an upstream, as types (after httpx's hierarchy).

    UpstreamError                      .sent_nothing: the backend's app cannot have seen it
    ├── ConnectError                   no connection (refused, unreachable)   sent_nothing
    │   └── ConnectTimeout             no connection within the timeout       sent_nothing
    ├── NotSent                        the connection died before we wrote    sent_nothing
    ├── UpstreamTimeout                no first / next byte in time
    ├── ClosedBeforeResponse           closed or reset after we wrote, before any byte
    │                                  (.reused: a stale keep-alive connection, not the backend)
    ├── ClosedMidResponse              closed or reset after the first byte
    ├── ProtocolError                  a malformed answer
    └── ResponseTooLarge               a whole answer over the caller's bound

Callers decide by type, never by message text.
"""

from __future__ import annotations

__all__ = [
    "ClosedBeforeResponse",
    "ClosedMidResponse",
    "ConnectError",
    "ConnectTimeout",
    "NotSent",
    "ProtocolError",
    "ResponseTooLarge",
    "UpstreamError",
    "UpstreamTimeout",
]


class UpstreamError(Exception):
    """Any failure of one upstream exchange."""

    # True when the request surely did not reach the backend's application:
    # safe to send again anywhere, and says nothing about the backend's answers.
    sent_nothing = False


class ConnectError(UpstreamError):
    """No connection could be made (refused, unreachable, reset during connect)."""

    sent_nothing = True


class ConnectTimeout(ConnectError):
    """No connection within the connect timeout."""


class NotSent(UpstreamError):
    """The connection was closed before the request was written (e.g. a backend that
    accepts and closes at once, or a keep-alive connection closed by its peer)."""

    sent_nothing = True


class UpstreamTimeout(UpstreamError):
    """No byte within the timeout. `first_byte`: the answer had not started."""

    def __init__(self, message: str, *, first_byte: bool = True) -> None:
        super().__init__(message)
        self.first_byte = first_byte


class ClosedBeforeResponse(UpstreamError):
    """Closed or reset after the request was written, before any byte of the answer.

    `reused`: the connection had served an earlier exchange; a peer closing an idle
    keep-alive connection races with our write, so this is the connection's fault, not
    the backend's, and the request is safe to retry once on a fresh connection
    (the backend's HTTP server had not read it: RFC 9112 9.3.1)."""

    def __init__(self, message: str, *, reused: bool = False) -> None:
        super().__init__(message)
        self.reused = reused


class ClosedMidResponse(UpstreamError):
    """Closed or reset after the answer started."""


class ProtocolError(UpstreamError):
    """The backend's answer is not valid HTTP/1.1."""


class ResponseTooLarge(UpstreamError):
    """A whole answer passed the caller's size bound."""
