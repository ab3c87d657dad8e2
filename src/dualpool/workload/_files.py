"""File helpers shared by the trace readers: open, header checks, int parsing."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from dualpool.errors import WorkloadError

__all__ = ["column_indices", "open_text", "parse_count"]


@contextmanager
def open_text(path: Path) -> Iterator[TextIO]:
    """Open a UTF-8 text file for streaming, or raise WorkloadError."""
    try:
        f = open(path, encoding="utf-8", newline="")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        raise WorkloadError(f"{path}: no such file; check the path") from None
    except IsADirectoryError:
        raise WorkloadError(f"{path}: is a directory, expected a file") from None
    except OSError as e:
        raise WorkloadError(f"{path}: cannot open ({e.strerror})") from None
    try:
        yield f
    except UnicodeDecodeError as e:
        raise WorkloadError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise WorkloadError(f"{path}: malformed CSV ({e})") from None
    finally:
        f.close()


def column_indices(path: Path, header: Sequence[str] | None, required: Sequence[str]) -> list[int]:
    """Positions of the `required` columns in `header` (case-insensitive)."""
    if header is None:
        raise WorkloadError(
            f"{path}:1: empty file; expected a CSV header with {', '.join(required)}"
        )
    names = [h.strip().lower() for h in header]
    out: list[int] = []
    for col in required:
        try:
            out.append(names.index(col.lower()))
        except ValueError:
            raise WorkloadError(
                f"{path}:1: bad header {','.join(header)!r}: expected columns {','.join(required)}"
            ) from None
    return out


def parse_count(text: str, path: Path, line: int, column: str) -> int:
    """A non-negative integer token count, or WorkloadError naming the cell."""
    try:
        v = int(text)
    except ValueError:
        try:  # some exports write 12.0; accept integral floats
            f = float(text)
        except ValueError:
            f = float("nan")
        if not f.is_integer():
            raise WorkloadError(
                f"{path}:{line}: {column} must be a non-negative integer, got {text!r}"
            ) from None
        v = int(f)
    if v < 0:
        raise WorkloadError(f"{path}:{line}: {column} must be a non-negative integer, got {v}")
    return v
