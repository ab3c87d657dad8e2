"""Which headers cross the gateway, in each direction.

Hop-by-hop headers (RFC 9110 7.6.1, and any the sender named in Connection) never
do. Upstream, the gateway also drops what it sets itself (host, framing, the
backend key) and what is the client's business only: its cookies and any
X-Forwarded-* / Forwarded it sent (a client must not choose what the backend
believes about the client). Downstream, the backend's Date gives way to ours.
"""

from __future__ import annotations

__all__ = ["HOP_BY_HOP", "filter_request_headers", "filter_response_headers"]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
_NOT_UPSTREAM = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"content-type",
    b"authorization",
    b"expect",
    b"accept-encoding",
    b"cookie",
    b"forwarded",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
    b"x-forwarded-port",
    b"x-real-ip",
}
_NOT_DOWNSTREAM = HOP_BY_HOP | {b"content-length", b"date"}


def filter_request_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    """Client headers worth forwarding upstream, serialised (hop-by-hop removed)."""
    out: list[bytes] = []
    extra: set[bytes] | None = None
    for k, v in headers:
        if k in _NOT_UPSTREAM or k.startswith(b"x-forwarded-"):
            if k == b"connection":
                extra = {t.strip().lower() for t in v.split(b",")}
            continue
        out += (k, b": ", v, b"\r\n")
    if extra is not None and out:
        # Headers the client named in Connection are hop-by-hop too.
        kept = [out[i : i + 4] for i in range(0, len(out), 4) if out[i] not in extra]
        return b"".join(b"".join(p) for p in kept)
    return b"".join(out)


def filter_response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    extra: set[bytes] | None = None
    for k, v in headers:
        if k == b"connection":
            extra = {t.strip().lower() for t in v.split(b",")}
    return [
        (k, v) for k, v in headers if k not in _NOT_DOWNSTREAM and (extra is None or k not in extra)
    ]
