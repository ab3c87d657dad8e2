"""`open_workload`: resolve a CLI workload string to a Workload.

Grammar:

    SPEC    := [KIND ":"] TARGET ["?" KEY "=" VALUE ("&" KEY "=" VALUE)*]
    KIND    := azure | lengths | cdf | jsonl | synthetic

Without a KIND, a TARGET naming a preset (azure-conv-like, azure-code-like,
lmsys-like, agent-heavy, azure-2024-week, lognormal) is synthetic; otherwise it is a path
and the kind is sniffed: *.jsonl -> jsonl, *.json -> cdf, *.csv -> azure or
lengths by the header. Examples:

    azure-2024-week?seed=3&rate_scale=2
    lengths:traces/sharegpt_8k_lengths_llama2.csv?rate=20&cv=2&loop=true&num_requests=100000
    cdf:cdf/lmsys_cdf.json?rate=50&output_fraction=0.3&duration_s=600
    traces/azure_2023_conv.csv?rate=100&end_s=600

Query values parse as bool (true/false), none, int, float, else string;
keyword `options` override query ones. Options per kind are the source's
constructor arguments (see each class), plus these, applied in this order
to every kind:

    rate        for azure traces: retime to this mean rate (req/s)
    rate_scale  multiply the arrival rate
    start_s, end_s   keep arrivals in [start_s, end_s)
    max_tokens  declare max_tokens: an int (caps outputs), "output", or none
    limit       keep the first N requests
    shard       "i/n": the i-th of n equal time slices (needs a duration)
"""

from __future__ import annotations

import csv
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dualpool.errors import WorkloadError
from dualpool.workload._azure import AZURE_COLUMNS, AzureTrace
from dualpool.workload._base import Workload
from dualpool.workload._files import open_text
from dualpool.workload._jsonl import JsonlWorkload
from dualpool.workload._lengths import LENGTH_COLUMNS, CdfWorkload, LengthTrace
from dualpool.workload._synthetic import PRESETS, preset
from dualpool.workload._transforms import (
    declare_max_tokens,
    limit,
    retime,
    scale_rate,
    shard,
    window,
)

__all__ = ["KINDS", "open_workload"]

KINDS = ("azure", "lengths", "cdf", "jsonl", "synthetic")

_COMMON = ("rate_scale", "start_s", "end_s", "max_tokens", "limit", "shard")


def _parse_value(text: str) -> object:
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def _split_spec(spec: str) -> tuple[str | None, str, dict[str, object]]:
    if not isinstance(spec, str) or not spec.strip():
        raise WorkloadError(f"empty workload spec {spec!r}; expected e.g. 'azure-conv-like'")
    spec = spec.strip()
    target, _, query = spec.partition("?")
    kind: str | None = None
    head, sep, rest = target.partition(":")
    if sep and head in KINDS:
        kind, target = head, rest
    opts: dict[str, object] = {}
    if query:
        for item in query.split("&"):
            if not item:
                continue
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise WorkloadError(
                    f"workload spec {spec!r}: bad option {item!r}; expected key=value"
                )
            opts[key.strip()] = _parse_value(value)
    return kind, target, opts


def _sniff(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "cdf"
    with open_text(path) as f:
        header = next(csv.reader(f), None)
    names = {h.strip().lower() for h in header or []}
    if {c.lower() for c in AZURE_COLUMNS} <= names:
        return "azure"
    if set(LENGTH_COLUMNS) <= names:
        return "lengths"
    raise WorkloadError(
        f"{path}:1: cannot tell the trace kind from the header {','.join(header or [])!r}; "
        f"expected {','.join(AZURE_COLUMNS)} (azure) or {','.join(LENGTH_COLUMNS)} (lengths), "
        "or name the kind: 'azure:PATH', 'lengths:PATH', 'cdf:PATH', 'jsonl:PATH'"
    )


def _call(
    kind: str, fn: Callable[..., Workload], args: tuple[Any, ...], opts: dict[str, object]
) -> Workload:
    params = inspect.signature(fn).parameters
    allowed = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise WorkloadError(
            f"unknown option(s) {', '.join(unknown)} for a {kind} workload; "
            f"allowed: {', '.join(sorted([*allowed, *_COMMON]))}"
        )
    missing = [n for n in allowed if params[n].default is inspect.Parameter.empty and n not in opts]
    if missing:
        raise WorkloadError(f"a {kind} workload needs option(s) {', '.join(missing)}, e.g. rate=10")
    try:
        return fn(*args, **opts)
    except TypeError as e:  # a wrongly typed option that slipped past the checks
        raise WorkloadError(f"bad option for a {kind} workload: {e}") from None


def _azure(path: str, *, category: str | None = None, rate: float | None = None) -> Workload:
    w: Workload = AzureTrace(path, category=category)
    return w if rate is None else retime(w, rate)


def open_workload(spec: str, **options: object) -> Workload:
    """Resolve a workload spec string (see the module doc) to a Workload.

    Raises WorkloadError for an unknown kind, preset, option or a bad file.
    """
    kind, target, opts = _split_spec(spec)
    opts.update(options)
    common = {k: opts.pop(k) for k in _COMMON if k in opts}

    if kind is None:
        if target in PRESETS:
            kind = "synthetic"
        else:
            path = Path(target)
            if not path.exists():
                raise WorkloadError(
                    f"{target}: no such file, and not a preset ({', '.join(PRESETS)})"
                )
            kind = _sniff(path)
    w: Workload
    if kind == "synthetic":
        w = _call(kind, preset, (target,), opts)
    elif kind == "azure":
        w = _call(kind, _azure, (target,), opts)
    elif kind == "lengths":
        w = _call(kind, LengthTrace, (target,), opts)
    elif kind == "cdf":
        w = _call(kind, CdfWorkload, (target,), opts)
    else:
        w = _call(kind, JsonlWorkload, (target,), opts)
    return _apply_common(w, common)


def _apply_common(w: Workload, common: dict[str, object]) -> Workload:
    if "rate_scale" in common:
        w = scale_rate(w, _num("rate_scale", common["rate_scale"]))
    if "start_s" in common or "end_s" in common:
        start = common.get("start_s")
        end = common.get("end_s")
        w = window(
            w,
            0.0 if start is None else _num("start_s", start),
            None if end is None else _num("end_s", end),
        )
    if "max_tokens" in common:
        mt = common["max_tokens"]
        if mt is not None and not isinstance(mt, (int, str)):
            raise WorkloadError(f"max_tokens must be an int, 'output' or none, got {mt!r}")
        w = declare_max_tokens(w, mt)
    if "limit" in common:
        n = common["limit"]
        if not isinstance(n, int):
            raise WorkloadError(f"limit must be an integer, got {n!r}")
        w = limit(w, n)
    if "shard" in common:
        text = str(common["shard"])
        i, slash, n_ = text.partition("/")
        try:
            index, count = int(i), int(n_)
        except ValueError:
            raise WorkloadError(f"shard must be 'i/n' (e.g. 0/4), got {text!r}") from None
        if not slash:
            raise WorkloadError(f"shard must be 'i/n' (e.g. 0/4), got {text!r}")
        w = shard(w, index, count)
    return w


def _num(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise WorkloadError(f"{name} must be a number, got {v!r}")
    return float(v)
