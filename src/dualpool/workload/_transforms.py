"""Composable wrappers over workloads: rate scaling, windows, limits, shards,
declared output limits and synthetic prompt sizes.

Each wrapper is itself a `Workload` (re-iterable when its input is, with a
describe() that names the chain); plain iterables of requests are accepted
too, iterated once. Wrappers forward `iter_window` so a time shard of a
seekable source stays cheap through a chain of rate scaling and windows.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import numpy.typing as npt

from dualpool.errors import WorkloadError
from dualpool.workload._base import Workload, batched, check_positive
from dualpool.workload._request import Request

__all__ = [
    "DEFAULT_BYTES_PER_TOKEN",
    "DeclareMaxTokens",
    "Limit",
    "ScaleRate",
    "Window",
    "WithPromptBytes",
    "declare_max_tokens",
    "limit",
    "measure_rate",
    "retime",
    "scale_rate",
    "shard",
    "shard_bounds",
    "window",
    "with_prompt_bytes",
]


def _describe(inner: Iterable[Request]) -> str:
    return inner.describe() if isinstance(inner, Workload) else type(inner).__name__


def _window_of(inner: Iterable[Request], start_s: float, end_s: float) -> Iterator[Request]:
    if isinstance(inner, Workload):
        return inner.iter_window(start_s, end_s)
    return _filter(inner, start_s, end_s)


def _filter(inner: Iterable[Request], start_s: float, end_s: float) -> Iterator[Request]:
    for r in inner:
        if r.arrival_s >= end_s:
            return
        if r.arrival_s >= start_s:
            yield r


class ScaleRate(Workload):
    """Arrival rate multiplied by `factor` (arrival times divided by it).

    factor 2 compresses the trace into half the time at twice the rate; the
    request mix is unchanged.
    """

    def __init__(self, inner: Iterable[Request], factor: float) -> None:
        self.inner = inner
        self.factor = check_positive("rate scale factor", factor)

    def describe(self) -> str:
        return f"{_describe(self.inner)}, rate x{self.factor:g}"

    def __iter__(self) -> Iterator[Request]:
        f = self.factor
        for r in self.inner:
            yield r.at(r.arrival_s / f)

    def iter_window(self, start_s: float, end_s: float) -> Iterator[Request]:
        f = self.factor
        # NOTE: membership is decided on the inner times, so shards of a scaled
        # workload still partition it exactly even when a/f rounds across a bound.
        for r in _window_of(self.inner, start_s * f, end_s * f):
            yield r.at(r.arrival_s / f)

    def rate_hint(self) -> float | None:
        h = self.inner.rate_hint() if isinstance(self.inner, Workload) else None
        return None if h is None else h * self.factor

    def duration_hint(self) -> float | None:
        h = self.inner.duration_hint() if isinstance(self.inner, Workload) else None
        return None if h is None else h / self.factor


def scale_rate(inner: Iterable[Request], factor: float) -> ScaleRate:
    """Multiply the arrival rate by `factor` (see ScaleRate)."""
    return ScaleRate(inner, factor)


def measure_rate(requests: Iterable[Request]) -> float:
    """Mean rate of a finite stream: (n - 1) / (last - first arrival), req/s."""
    n = 0
    first = last = 0.0
    for r in requests:
        if n == 0:
            first = r.arrival_s
        last = r.arrival_s
        n += 1
    if n < 2 or last <= first:
        raise WorkloadError(
            f"cannot measure a rate from {n} request(s) spanning {last - first:g} s; "
            "need at least two distinct arrival times"
        )
    return (n - 1) / (last - first)


def retime(inner: Workload, rate: float) -> ScaleRate:
    """Scale `inner` to a target mean rate (req/s).

    Uses the source's nominal rate when it has one (synthetic sources),
    otherwise measures it with one streaming pass (traces).
    """
    target = check_positive("rate", rate)
    if not isinstance(inner, Workload):
        raise WorkloadError("retime needs a re-iterable Workload (it may read it twice)")
    current = inner.rate_hint()
    if current is None:
        current = measure_rate(inner)
    return ScaleRate(inner, target / current)


class Window(Workload):
    """The requests with start_s <= arrival_s < end_s.

    With `rebase=True` arrival times are shifted so the window starts at 0.
    """

    def __init__(
        self,
        inner: Iterable[Request],
        start_s: float = 0.0,
        end_s: float | None = None,
        *,
        rebase: bool = False,
    ) -> None:
        self.inner = inner
        self.start_s = float(start_s)
        self.end_s = math.inf if end_s is None else float(end_s)
        if math.isnan(self.start_s) or math.isnan(self.end_s) or self.end_s < self.start_s:
            raise WorkloadError(
                f"bad time window [{start_s}, {end_s}): need start <= end (seconds)"
            )
        self.rebase = rebase

    def describe(self) -> str:
        return f"{_describe(self.inner)}, window [{self.start_s:g}, {self.end_s:g}) s"

    def __iter__(self) -> Iterator[Request]:
        return self.iter_window(-math.inf, math.inf)

    def iter_window(self, start_s: float, end_s: float) -> Iterator[Request]:
        off = self.start_s if self.rebase and math.isfinite(self.start_s) else 0.0
        lo = max(self.start_s, start_s + off)
        hi = min(self.end_s, end_s + off)
        if hi <= lo:
            return
        for r in _window_of(self.inner, lo, hi):
            yield r.at(r.arrival_s - off) if off else r

    def iter_blocks(
        self, start_s: float = -math.inf, end_s: float = math.inf
    ) -> Iterator[list[Request]]:
        rebased = self.rebase and math.isfinite(self.start_s) and self.start_s != 0.0
        if rebased or not isinstance(self.inner, Workload):
            yield from super().iter_blocks(start_s, end_s)
            return
        lo = max(self.start_s, start_s)
        hi = min(self.end_s, end_s)
        if hi > lo:
            yield from self.inner.iter_blocks(lo, hi)

    def duration_hint(self) -> float | None:
        if math.isfinite(self.end_s):
            return self.end_s - (self.start_s if self.rebase else 0.0)
        return self.inner.duration_hint() if isinstance(self.inner, Workload) else None

    def rate_hint(self) -> float | None:
        return self.inner.rate_hint() if isinstance(self.inner, Workload) else None


def window(
    inner: Iterable[Request],
    start_s: float = 0.0,
    end_s: float | None = None,
    *,
    rebase: bool = False,
) -> Window:
    """Keep requests arriving in [start_s, end_s) (see Window)."""
    return Window(inner, start_s, end_s, rebase=rebase)


class Limit(Workload):
    """The first `n` requests."""

    def __init__(self, inner: Iterable[Request], n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise WorkloadError(f"limit must be an integer >= 0, got {n!r}")
        self.inner = inner
        self.n = n

    def describe(self) -> str:
        return f"{_describe(self.inner)}, first {self.n}"

    def __iter__(self) -> Iterator[Request]:
        left = self.n
        if left == 0:
            return
        for r in self.inner:
            yield r
            left -= 1
            if left == 0:
                return

    def rate_hint(self) -> float | None:
        return self.inner.rate_hint() if isinstance(self.inner, Workload) else None


def limit(inner: Iterable[Request], n: int) -> Limit:
    """Keep the first n requests."""
    return Limit(inner, n)


def shard_bounds(index: int, count: int, duration_s: float) -> tuple[float, float]:
    """The [start, end) time slice of shard `index` of `count`.

    Slices are equal parts of [0, duration_s); the first starts at -inf and the
    last ends at +inf, so the shards partition any stream exactly, including
    requests past duration_s.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise WorkloadError(f"shard count must be an integer >= 1, got {count!r}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise WorkloadError(f"shard index must be an integer in [0, {count}), got {index!r}")
    d = check_positive("shard duration_s", duration_s)
    start = -math.inf if index == 0 else d * index / count
    end = math.inf if index == count - 1 else d * (index + 1) / count
    return start, end


def shard(
    inner: Iterable[Request], index: int, count: int, *, duration_s: float | None = None
) -> Window:
    """Shard `index` of `count` equal time slices of the workload.

    A pure function of (workload, index, count, duration): concatenating
    shards 0..count-1 gives the whole stream, in order. `duration_s`
    defaults to the workload's own duration hint; for a trace without one it
    costs a streaming pass to find the last arrival (pass it to avoid that).
    Shards of seekable sources (synthetic) start without generating the
    requests before them.
    """
    d = duration_s
    if d is None and isinstance(inner, Workload):
        d = inner.duration_hint()
        if d is None:
            last = 0.0
            for r in inner:
                last = r.arrival_s
            d = max(last, 1e-9)
    if d is None:
        raise WorkloadError("shard needs duration_s for a one-shot iterable (or pass a Workload)")
    start, end = shard_bounds(index, count, d)
    return Window(inner, start, None if end == math.inf else end)


class DeclareMaxTokens(Workload):
    """Give every request a declared `max_tokens`.

    - an int: max_tokens = value, and output_tokens is capped at it (a
      backend stops there);
    - "output": max_tokens = output_tokens (a perfectly informed client);
    - None: remove max_tokens (the router must fall back to a default).
    """

    def __init__(self, inner: Iterable[Request], value: int | str | None) -> None:
        if (value is not None and value != "output") and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise WorkloadError(
                f"max_tokens must be a positive integer, 'output' or None, got {value!r}"
            )
        self.inner = inner
        self.value = value

    def describe(self) -> str:
        return f"{_describe(self.inner)}, max_tokens={self.value}"

    def __iter__(self) -> Iterator[Request]:
        return self._map(iter(self.inner))

    def iter_window(self, start_s: float, end_s: float) -> Iterator[Request]:
        return self._map(_window_of(self.inner, start_s, end_s))

    def _map(self, it: Iterator[Request]) -> Iterator[Request]:
        v = self.value
        for r in it:
            r = r.at(r.arrival_s)
            if v is None:
                r.max_tokens = None
            elif v == "output":
                r.max_tokens = r.output_tokens
            else:
                assert isinstance(v, int)
                r.max_tokens = v
                if r.output_tokens > v:
                    r.output_tokens = v
            yield r

    def rate_hint(self) -> float | None:
        return self.inner.rate_hint() if isinstance(self.inner, Workload) else None

    def duration_hint(self) -> float | None:
        return self.inner.duration_hint() if isinstance(self.inner, Workload) else None


def declare_max_tokens(inner: Iterable[Request], value: int | str | None) -> DeclareMaxTokens:
    """Set a declared max_tokens on every request (see DeclareMaxTokens)."""
    return DeclareMaxTokens(inner, value)


# Bytes per token by content class, as reported in the paper (Llama-3
# tokenizer); unknown classes use "default", the paper's starting ratio.
DEFAULT_BYTES_PER_TOKEN: Mapping[str, float] = {
    "prose": 4.48,
    "code": 3.52,
    "cjk": 2.01,
    "default": 4.0,
}

_MASK64 = (1 << 64) - 1


def _splitmix64_np(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """_splitmix64 over a uint64 array (numpy's uint64 arithmetic wraps mod 2^64)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class WithPromptBytes(Workload):
    """Synthesize `prompt_bytes` for sources that only know token counts.

    prompt_bytes = round(prompt_tokens * ratio[category] * (1 + jitter * z)),
    z a standard normal drawn from a hash of (seed, arrival_s, prompt_tokens):
    a per-request pure function, so shards and full runs agree. Requests that
    already carry prompt_bytes, or whose prompt_tokens is unknown, pass as is.
    """

    def __init__(
        self,
        inner: Iterable[Request],
        bytes_per_token: Mapping[str, float] | None = None,
        *,
        jitter: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.inner = inner
        self.ratios = dict(DEFAULT_BYTES_PER_TOKEN if bytes_per_token is None else bytes_per_token)
        for k, v in self.ratios.items():
            check_positive(f"bytes_per_token[{k!r}]", v)
        self.default = self.ratios.get("default", 4.0)
        self.jitter = check_positive("jitter", jitter, allow_zero=True)
        self.seed = seed & _MASK64

    def describe(self) -> str:
        return f"{_describe(self.inner)}, synthetic prompt bytes (jitter {self.jitter:g})"

    def __iter__(self) -> Iterator[Request]:
        return self._map(iter(self.inner))

    def iter_window(self, start_s: float, end_s: float) -> Iterator[Request]:
        return self._map(_window_of(self.inner, start_s, end_s))

    def _map(self, it: Iterator[Request]) -> Iterator[Request]:
        # Blocks of requests hashed with numpy: the same per-request function as
        # _one (equal up to the last ulp of log/cos), several times cheaper.
        if not self.jitter:
            for r in it:
                yield self._one(r)
            return
        for block in batched(it):
            yield from self._block(block)

    def _one(self, r: Request) -> Request:
        """One request, in plain Python (the definition _block vectorizes)."""
        if r.prompt_bytes is not None or r.prompt_tokens < 0:
            return r
        ratio = self.ratios.get(r.category, self.default) if r.category else self.default
        if self.jitter:
            h = _splitmix64(int.from_bytes(struct.pack("<d", r.arrival_s), "little") ^ self.seed)
            h2 = _splitmix64(h ^ r.prompt_tokens)
            u1 = ((h >> 11) + 1) / 9007199254740993.0  # (0, 1]
            u2 = (h2 >> 11) / 9007199254740992.0
            z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
            ratio *= max(0.05, 1.0 + self.jitter * z)
        r = r.at(r.arrival_s)
        r.prompt_bytes = max(0, round(r.prompt_tokens * ratio))
        return r

    def _block(self, block: list[Request]) -> list[Request]:
        todo = [r for r in block if r.prompt_bytes is None and r.prompt_tokens >= 0]
        if not todo:
            return block
        nbytes = self._bytes_of(todo)
        out: list[Request] = []
        j = 0
        for r in block:
            if r.prompt_bytes is None and r.prompt_tokens >= 0:
                r = r.at(r.arrival_s)
                r.prompt_bytes = nbytes[j]
                j += 1
            out.append(r)
        return out

    def _bytes_of(self, todo: list[Request]) -> list[int]:
        """Synthetic prompt bytes of `todo` (all without bytes, with known tokens)."""
        ratios, default = self.ratios, self.default
        n = len(todo)
        arrival = np.fromiter((r.arrival_s for r in todo), np.float64, n)
        tokens = np.fromiter((r.prompt_tokens for r in todo), np.int64, n)
        base = np.fromiter(
            (ratios.get(r.category, default) if r.category else default for r in todo),
            np.float64,
            n,
        )
        h = _splitmix64_np(arrival.view(np.uint64) ^ np.uint64(self.seed))
        h2 = _splitmix64_np(h ^ tokens.astype(np.uint64))
        u1 = ((h >> np.uint64(11)) + np.uint64(1)) / 9007199254740993.0
        u2 = (h2 >> np.uint64(11)) / 9007199254740992.0
        z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)
        ratio = base * np.maximum(0.05, 1.0 + self.jitter * z)
        out: list[int] = np.maximum(0.0, np.rint(tokens * ratio)).astype(np.int64).tolist()
        return out

    def iter_blocks_with_bytes(self) -> Iterator[tuple[list[Request], list[int | None]]]:
        """(requests, their prompt bytes) in blocks: what `iter_with_bytes` yields,
        a block at a time (the inner workload's `iter_blocks`), for the simulator."""
        blocks = (
            self.inner.iter_blocks() if isinstance(self.inner, Workload) else batched(self.inner)
        )
        for block in blocks:
            if not block:
                continue  # the contract says never; the simulator reads [] as the end
            if not self.jitter:
                yield block, [self._one(r).prompt_bytes for r in block]
                continue
            todo = [r for r in block if r.prompt_bytes is None and r.prompt_tokens >= 0]
            if len(todo) == len(block):
                nbytes: list[int | None] = list(self._bytes_of(block))
                yield block, nbytes
            elif not todo:
                yield block, [r.prompt_bytes for r in block]
            else:
                it = iter(self._bytes_of(todo))
                yield (
                    block,
                    [
                        next(it)
                        if r.prompt_bytes is None and r.prompt_tokens >= 0
                        else r.prompt_bytes
                        for r in block
                    ],
                )

    def iter_with_bytes(self) -> Iterator[tuple[Request, int | None]]:
        """(inner request, its prompt bytes) pairs: what iterating yields, without
        copying each record to stamp the bytes on it. The bytes are the record's
        own when it has them, None when its prompt tokens are unknown."""
        for block, nbytes in self.iter_blocks_with_bytes():
            yield from zip(block, nbytes, strict=True)

    def rate_hint(self) -> float | None:
        return self.inner.rate_hint() if isinstance(self.inner, Workload) else None

    def duration_hint(self) -> float | None:
        return self.inner.duration_hint() if isinstance(self.inner, Workload) else None


def with_prompt_bytes(
    inner: Iterable[Request],
    bytes_per_token: Mapping[str, float] | None = None,
    *,
    jitter: float = 0.1,
    seed: int = 0,
) -> WithPromptBytes:
    """Add synthetic prompt_bytes from token counts (see WithPromptBytes)."""
    return WithPromptBytes(inner, bytes_per_token, jitter=jitter, seed=seed)
