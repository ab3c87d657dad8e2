"""Per-request result rows, streamed to CSV (or Parquet when pyarrow is installed).

Rows are written as requests end (completion order, not arrival order); a
rejected request has empty latencies. Columns (`COLUMNS`):

    arrival_s      arrival time in the workload's clock (s)
    pool           pool that served (or last refused) it; "" if the policy refused it
    instance       instance index within the pool; -1 if none
    prompt_tokens  true prompt tokens
    output_tokens  the workload's output length
    generated      tokens actually generated (capped by max_tokens / the context)
    ttft_s, tpot_s, e2e_s   latencies (s), empty when rejected
    preemptions    times the request was preempted (recomputed)
    rejected, misrouted, spilled   0/1 flags
"""

from __future__ import annotations

import csv
import importlib.util
import io
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from dualpool.errors import ConfigError

__all__ = ["COLUMNS", "CsvSink", "ParquetSink", "RecordSink", "open_sink", "parquet_available"]

COLUMNS: tuple[str, ...] = (
    "arrival_s",
    "pool",
    "instance",
    "prompt_tokens",
    "output_tokens",
    "generated",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "preemptions",
    "rejected",
    "misrouted",
    "spilled",
)

Row = tuple[Any, ...]


def parquet_available() -> bool:
    return importlib.util.find_spec("pyarrow") is not None


class RecordSink(ABC):
    """Where per-request rows go."""

    @abstractmethod
    def write(self, row: Row) -> None: ...

    def flush(self) -> None:  # noqa: B027
        """Make everything written so far durable."""

    @abstractmethod
    def close(self) -> None: ...


class CsvSink(RecordSink):
    def __init__(self, path: str | Path, *, header: bool = True) -> None:
        self.path = Path(path)
        try:
            self._f: io.TextIOWrapper = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        except OSError as e:
            raise ConfigError("--requests-out", f"cannot write {self.path}: {e.strerror}") from None
        self._w = csv.writer(self._f)
        if header:
            self._w.writerow(COLUMNS)

    def write(self, row: Row) -> None:
        self._w.writerow([("" if v is None else int(v) if isinstance(v, bool) else v) for v in row])

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class ParquetSink(RecordSink):
    """Buffers rows and writes Parquet row groups (needs pyarrow: extra `parquet`)."""

    _BATCH = 65536

    def __init__(self, path: str | Path) -> None:
        if not parquet_available():
            raise ConfigError(
                "--requests-out",
                "Parquet output needs pyarrow: pip install 'dualpool[parquet]' (or write .csv)",
            )
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = Path(path)
        self._pa = pa
        self._schema = pa.schema(
            [
                ("arrival_s", pa.float64()),
                ("pool", pa.string()),
                ("instance", pa.int32()),
                ("prompt_tokens", pa.int64()),
                ("output_tokens", pa.int64()),
                ("generated", pa.int64()),
                ("ttft_s", pa.float64()),
                ("tpot_s", pa.float64()),
                ("e2e_s", pa.float64()),
                ("preemptions", pa.int32()),
                ("rejected", pa.bool_()),
                ("misrouted", pa.bool_()),
                ("spilled", pa.bool_()),
            ]
        )
        try:
            self._writer = pq.ParquetWriter(str(self.path), self._schema)
        except OSError as e:
            raise ConfigError("--requests-out", f"cannot write {self.path}: {e}") from None
        self._rows: list[Row] = []

    def write(self, row: Row) -> None:
        self._rows.append(row)
        if len(self._rows) >= self._BATCH:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        cols = list(zip(*self._rows, strict=True))
        self._rows = []
        table = self._pa.Table.from_arrays(
            [self._pa.array(list(c), type=f.type) for c, f in zip(cols, self._schema, strict=True)],
            schema=self._schema,
        )
        self._writer.write_table(table)

    def close(self) -> None:
        self.flush()
        self._writer.close()


def open_sink(path: str | Path) -> RecordSink:
    """A CSV sink, or Parquet for a *.parquet path."""
    p = Path(path)
    if p.suffix.lower() in (".parquet", ".pq"):
        return ParquetSink(p)
    return CsvSink(p)
