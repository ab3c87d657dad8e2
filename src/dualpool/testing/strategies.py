"""Hypothesis strategies for fuzzing the OpenAI-compatible faces: request bodies shaped
by the OpenAI chat/completions schema (well-typed, mistyped and hostile values), and
raw HTTP/1.1 requests. Used by benchmarks/fuzz.py and the test suite (needs hypothesis,
a development dependency)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

__all__ = ["chat_body", "completion_body", "json_values", "raw_http", "request_case"]

_ROLES = ("system", "user", "assistant", "tool", "developer", "function", "", "root")

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _or_junk(s: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right type, sometimes any JSON value."""
    return st.one_of(s, s, s, json_values)


# Long prompts are built, not drawn character by character (drawing is the slow part).
_text = st.text(max_size=200) | st.integers(min_value=300, max_value=4000).map(
    lambda n: "lorem ipsum " * n
)
_part = _or_junk(
    st.one_of(
        st.fixed_dictionaries({"type": st.just("text"), "text": _or_junk(st.text(max_size=50))}),
        st.fixed_dictionaries(
            {
                "type": st.just("image_url"),
                "image_url": _or_junk(st.fixed_dictionaries({"url": st.text(max_size=20)})),
            }
        ),
        st.dictionaries(
            st.sampled_from(["type", "text", "image_url", "x"]), json_values, max_size=3
        ),
    )
)
_content = _or_junk(st.one_of(_text, st.none(), st.lists(_part, max_size=4)))
_message = _or_junk(
    st.fixed_dictionaries(
        {"role": _or_junk(st.sampled_from(_ROLES))},
        optional={
            "content": _content,
            "name": _or_junk(st.text(max_size=10)),
            "tool_calls": json_values,
        },
    )
)
_max_tokens = _or_junk(
    st.integers(min_value=-5, max_value=64) | st.integers(min_value=-(10**40), max_value=10**40)
)

_COMMON = {
    "model": _or_junk(st.sampled_from(["bench", "gpt-4", ""])),
    "max_tokens": _max_tokens,
    "stream": _or_junk(st.booleans() | st.none()),
    "stream_options": _or_junk(
        st.none() | st.fixed_dictionaries({}, optional={"include_usage": _or_junk(st.booleans())})
    ),
    "temperature": _or_junk(st.floats(min_value=0, max_value=2)),
    "top_p": _or_junk(st.floats(min_value=0, max_value=1)),
    "n": _or_junk(st.integers(min_value=0, max_value=3)),
    "stop": _or_junk(st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=3)),
    "seed": _or_junk(st.integers()),
    "user": _or_junk(st.text(max_size=10)),
}

chat_body: st.SearchStrategy[Any] = st.fixed_dictionaries(
    {"messages": _or_junk(st.lists(_message, min_size=1, max_size=4))},
    optional={
        **_COMMON,
        "max_completion_tokens": _max_tokens,
        "tools": _or_junk(st.lists(json_values, max_size=2)),
        "response_format": json_values,
    },
)
completion_body: st.SearchStrategy[Any] = st.fixed_dictionaries(
    {
        "prompt": _or_junk(
            _text | st.lists(st.integers(0, 50_000), max_size=50) | st.lists(_text, max_size=2)
        )
    },
    optional=_COMMON,
)


def _encode(value: Any) -> bytes:
    return json.dumps(value).encode()


_deep = st.integers(min_value=50, max_value=5000).map(lambda n: b"[" * n + b"]" * n)
_body_bytes = st.one_of(
    chat_body.map(_encode),
    chat_body.map(_encode),
    chat_body.map(_encode),
    completion_body.map(_encode),
    json_values.map(_encode),
    st.binary(max_size=200),
    _deep,
    st.integers(min_value=1000, max_value=6000).map(lambda n: b'{"max_tokens": ' + b"9" * n + b"}"),
)


@st.composite
def request_case(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(path, body) of a POST to a generation endpoint."""
    path = draw(
        st.sampled_from([b"/v1/chat/completions", b"/v1/chat/completions", b"/v1/completions"])
    )
    return path, draw(_body_bytes)


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)


@st.composite
def raw_http(draw: st.DrawFn) -> bytes:
    """A whole raw request: method, target, version, headers and framing, often wrong."""
    method = draw(
        st.sampled_from(["GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "BREW", "post", ""])
    )
    target = draw(
        st.sampled_from(
            [
                "/v1/chat/completions",
                "/v1/completions",
                "/v1/models",
                "/health",
                "/metrics",
                "/admin/state",
                "*",
                "http://x/",
                "/%00",
                "/" + "a" * 3000,
            ]
        )
        | st.text(alphabet="/?&=%abc\x7f ", max_size=40)
    )
    version = draw(
        st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/9", "", "http/1.1"])
    )
    body = draw(_body_bytes | st.just(b""))
    headers = draw(
        st.lists(
            st.tuples(_token, st.text(alphabet="abc 0123456789;,=\t", max_size=30)), max_size=5
        )
    )
    framing = draw(
        st.sampled_from(
            ["cl", "cl", "cl_short", "cl_bad", "chunked", "chunked_bad", "both", "none"]
        )
    )
    lines = [f"{method} {target} {version}".encode("utf-8", "replace"), b"host: 127.0.0.1"]
    lines += [f"{k}: {v}".encode() for k, v in headers]
    if framing in ("cl", "both"):
        lines.append(b"content-length: %d" % len(body))
    elif framing == "cl_short":
        lines.append(b"content-length: %d" % (len(body) + 10))
    elif framing == "cl_bad":
        lines.append(
            b"content-length: " + draw(st.sampled_from([b"-1", b"1e3", b"abc", b"1, 2", b"9" * 30]))
        )
    if framing in ("chunked", "chunked_bad", "both"):
        lines.append(b"transfer-encoding: chunked")
        body = (
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            if framing != "chunked_bad"
            else b"zz\r\n" + body
        )
    lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
