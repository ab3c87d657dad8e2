"""A JSON request body parser with bounds: depth and number size, answered as 400.

`json.loads` alone turns hostile bodies into our own exceptions: nesting ~1,000 deep
raises RecursionError, an integer of 4,300+ digits ValueError from Python's
int-to-string limit (and a 4,000-digit one parses, then breaks whatever prints it).
`parse_json_body` raises `BadJson` (a ValueError with a message fit for a 400) instead.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["BadJson", "parse_json_body"]

MAX_DEPTH = 64
MAX_NUMBER_CHARS = 64

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS = re.compile(rb"[\[\]{}]")


class BadJson(ValueError):
    """The body is not JSON within the bounds; the message says why."""


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise BadJson(f"a number in the body has more than {MAX_NUMBER_CHARS} digits")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise BadJson(f"a number in the body has more than {MAX_NUMBER_CHARS} characters")
    return float(text)


_decode = json.JSONDecoder().decode
_decode_bounded = json.JSONDecoder(parse_int=_int, parse_float=_float).decode
_RUN = MAX_NUMBER_CHARS - 4  # a longer number has a run of at least this many digits
_LONG_RUN = re.compile(rb"[0-9]{%d}" % _RUN)


def _depth(body: bytes) -> int:
    depth = deepest = 0
    for m in _BRACKETS.finditer(_STRINGS.sub(b'""', body)):
        if m.group() in b"[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


def parse_json_body(body: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """The parsed body; raises BadJson (never RecursionError or a bare ValueError)."""
    # Cheap first: fewer brackets than the bound cannot nest deeper than it.
    if body.count(b"[") + body.count(b"{") > max_depth and _depth(body) > max_depth:
        raise BadJson(f"the body nests deeper than {max_depth} levels")
    # A number can be long only where a long run of digits is (a string may hold one
    # too): only then does the decoder with the per-number check run.
    digits = len(body) - len(body.translate(None, b"0123456789"))
    long_run = digits >= _RUN and _LONG_RUN.search(body) is not None
    decode = _decode_bounded if long_run else _decode
    try:
        return decode(body.decode())
    except BadJson:
        raise
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise BadJson(f"the body nests deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadJson(f"request body is not valid JSON: {exc}") from None
