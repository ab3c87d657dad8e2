"""The Azure LLM inference traces (2023 and 2024), read streaming.

Format: `TIMESTAMP,ContextTokens,GeneratedTokens`, one request a row, sorted
by time. Timestamps seen in the wild:

    2023-11-16 18:17:03.9799600        2023 files: 7 fractional digits
    2024-05-10 00:00:00.010            2024 files: milliseconds
    2024-05-10 00:00:00.009930+00:00   with a UTC offset
    12.5                               plain seconds (our own exports)

`arrival_s` is seconds since the first row. The files are read line by line
with the csv module (a 27M-row week never sits in memory), and timestamps are
parsed by slicing the fixed-width fields, not by `datetime.strptime` per row:
the date part is converted once per distinct day and cached.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

from dualpool.errors import WorkloadError
from dualpool.workload._base import Workload
from dualpool.workload._files import column_indices, open_text, parse_count
from dualpool.workload._request import Request

__all__ = ["AZURE_COLUMNS", "AzureTrace", "TimestampParser"]

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


class TimestampParser:
    """Turns trace timestamps into seconds relative to the first date seen.

    Seconds are counted from midnight of the first row's date, so a week of
    timestamps keeps sub-microsecond precision (epoch seconds in a float would
    not hold 7 fractional digits).
    """

    def __init__(self) -> None:
        self._first_day: dt.date | None = None
        self._day_offset: dict[str, float] = {}
        self._numeric: bool | None = None
        self._minute: dict[str, float] = {}  # 'YYYY-MM-DD HH:MM' -> seconds

    def __call__(self, s: str) -> float:
        """Seconds for one timestamp; raises ValueError with a reason."""
        # fastest path: the 'YYYY-MM-DD HH:MM' prefix was seen (and validated)
        # before; only the seconds field is new. Rows come ~ms apart, so the
        # hit rate is ~100%.
        base = self._minute.get(s[:16])
        if base is not None and s[16:17] == ":":
            try:
                return base + float(s[17:])
            except ValueError:
                pass
        return self._parse(s)

    def _parse(self, s: str) -> float:
        if self._numeric is None:
            try:
                float(s)
                self._numeric = True
            except ValueError:
                self._numeric = False
        if self._numeric:
            try:
                return float(s)
            except ValueError:
                raise ValueError(
                    f"bad timestamp {s!r}: expected seconds, like the first row"
                ) from None
        # fast path: 'YYYY-MM-DD HH:MM:SS[.f...]'
        if len(s) >= 19 and s[4] == "-" and s[13] == ":" and s[16] == ":":
            day = self._day_offset.get(s[:10])
            if day is None:
                day = self._new_day(s[:10])
            try:
                hour, minute = int(s[11:13]), int(s[14:16])
                if s[10] in " T" and s[13] == ":" and 0 <= hour < 24 and 0 <= minute < 60:
                    base = day + hour * 3600 + minute * 60
                    t = base + float(s[17:])
                    if len(self._minute) > 100_000:  # a week has 10,080 minutes
                        self._minute.clear()
                    self._minute[s[:16]] = base
                    return t
            except ValueError:
                pass
        return self._slow(s)

    def _new_day(self, text: str) -> float:
        try:
            d = dt.date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"bad date {text!r}") from None
        if self._first_day is None:
            self._first_day = d
        off = float((d - self._first_day).days * 86_400)
        self._day_offset[text] = off
        return off

    def _slow(self, s: str) -> float:
        """Anything datetime.fromisoformat accepts, e.g. with a UTC offset."""
        text = s.strip().replace("Z", "+00:00")
        # fromisoformat takes at most 6 fractional digits before 3.12; trim extras
        dot = text.find(".", 17)
        if dot != -1:
            end = dot + 1
            while end < len(text) and text[end].isdigit():
                end += 1
            frac = text[dot + 1 : end]
            text = text[: dot + 1] + (frac[:6] or "0") + text[end:]
            extra = float("0." + frac[6:]) * 1e-6 if len(frac) > 6 else 0.0
        else:
            extra = 0.0
        try:
            t = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"bad timestamp {s!r}: expected 'YYYY-MM-DD HH:MM:SS.fff' or seconds"
            ) from None
        offset = t.utcoffset() or dt.timedelta(0)
        naive = t.replace(tzinfo=None) - offset
        day = self._day_offset.get(naive.date().isoformat())
        if day is None:
            day = self._new_day(naive.date().isoformat())
        secs = naive.hour * 3600 + naive.minute * 60 + naive.second + naive.microsecond * 1e-6
        return day + secs + extra


class AzureTrace(Workload):
    """An Azure LLM inference trace CSV (2023 one-hour or 2024 one-week files).

    Args:
        path: the CSV file.
        category: a content class to stamp on every request (the traces have
            none; e.g. "code" for the code service).
    """

    def __init__(self, path: str | Path, *, category: str | None = None) -> None:
        self.path = Path(path)
        self.category = category

    def describe(self) -> str:
        return f"azure trace {self.path.name}"

    def __iter__(self) -> Iterator[Request]:
        path = self.path
        cat = self.category
        with open_text(path) as f:
            reader = csv.reader(f)
            it, ip, io = column_indices(path, next(reader, None), AZURE_COLUMNS)
            need = max(it, ip, io) + 1
            parse = TimestampParser()
            first: float | None = None
            prev = 0.0
            for row in reader:
                if len(row) < need:
                    if not row or not any(row):
                        continue  # blank line
                    raise WorkloadError(
                        f"{path}:{reader.line_num}: expected {len(AZURE_COLUMNS)} columns "
                        f"{','.join(AZURE_COLUMNS)}, got {','.join(row)!r}"
                    )
                try:
                    p = int(row[ip])
                    o = int(row[io])
                    if p < 0 or o < 0:
                        raise ValueError
                except ValueError:
                    line = reader.line_num
                    p = parse_count(row[ip], path, line, AZURE_COLUMNS[1])
                    o = parse_count(row[io], path, line, AZURE_COLUMNS[2])
                try:
                    t = parse(row[it])
                except ValueError as e:
                    raise WorkloadError(f"{path}:{reader.line_num}: {e}") from None
                if first is None:
                    first = t
                a = t - first
                if a < prev:
                    raise WorkloadError(
                        f"{path}:{reader.line_num}: timestamp {row[it]!r} is earlier than "
                        "the row before; the trace must be sorted by TIMESTAMP"
                    )
                prev = a
                yield Request(a, p, o, None, None, cat)
