"""A small Prometheus registry: counters, gauges, histograms, text exposition.

Written here rather than taken from prometheus-client because the request path
touches several metrics per request: a child is a plain object whose update is
one attribute add (no lock: the gateway is one asyncio thread), and labelled
children are cached by the caller, so recording costs tens of nanoseconds.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

__all__ = ["Counter", "Gauge", "Histogram", "Registry"]

_M = TypeVar("_M", bound="_Metric")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _fmt(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class _Value:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class _HistogramChild:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)

    def _label_str(self, values: tuple[str, ...], extra: str = "") -> str:
        parts = [f'{k}="{_escape(v)}"' for k, v in zip(self.labelnames, values, strict=True)]
        if extra:
            parts.append(extra)
        return "{" + ",".join(parts) + "}" if parts else ""

    def render(self) -> Iterable[str]:  # pragma: no cover - overridden
        return ()


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._children: dict[tuple[str, ...], _Value] = {}
        if not self.labelnames:
            self._children[()] = _Value()

    def labels(self, *values: str) -> _Value:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            child = self._children[values] = _Value()
        return child

    def inc(self, amount: float = 1.0) -> None:
        self._children[()].value += amount

    def remove(self, *values: str) -> None:
        self._children.pop(values, None)

    def value(self, *values: str) -> float:
        child = self._children.get(values)
        return 0.0 if child is None else child.value

    def render(self) -> Iterable[str]:
        suffix = "_total" if self.kind == "counter" else ""
        for values, child in sorted(self._children.items()):
            yield f"{self.name}{suffix}{self._label_str(values)} {_fmt(child.value)}"


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float) -> None:
        self._children[()].value = value

    def clear(self) -> None:
        self._children.clear()


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self._children: dict[tuple[str, ...], _HistogramChild] = {}
        if not self.labelnames:
            self._children[()] = _HistogramChild(self.bounds)

    def labels(self, *values: str) -> _HistogramChild:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            child = self._children[values] = _HistogramChild(self.bounds)
        return child

    def observe(self, value: float) -> None:
        self._children[()].observe(value)

    def render(self) -> Iterable[str]:
        for values, child in sorted(self._children.items()):
            acc = 0
            for bound, n in zip(child.bounds, child.counts, strict=False):
                acc += n
                le = 'le="' + _fmt(bound) + '"'
                yield f"{self.name}_bucket{self._label_str(values, le)} {acc}"
            inf = self._label_str(values, 'le="+Inf"')
            yield f"{self.name}_bucket{inf} {child.count}"
            yield f"{self.name}_sum{self._label_str(values)} {_fmt(child.sum)}"
            yield f"{self.name}_count{self._label_str(values)} {child.count}"


class Registry:
    """Metrics in registration order; `collectors` refresh gauges before a render."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []
        self.collectors: list[Callable[[], None]] = []

    def add(self, metric: _M) -> _M:
        self._metrics.append(metric)
        return metric

    def render(self) -> bytes:
        for collect in self.collectors:
            collect()
        lines: list[str] = []
        for m in self._metrics:
            # Text format 0.0.4 names a counter family by its samples' name, `_total`
            # included, as prometheus_client writes and parses it (OpenMetrics would
            # drop the suffix; that is a different content type).
            name = m.name + "_total" if m.kind == "counter" else m.name
            lines.append(f"# HELP {name} {_escape_help(m.help)}")
            lines.append(f"# TYPE {name} {m.kind}")
            lines.extend(m.render())
        lines.append("")
        return "\n".join(lines).encode()
