"""Length-only traces (`num_prefill_tokens,num_decode_tokens,...`) and CDF files,
given synthetic arrivals.

A length file is small (tens of thousands of rows) and may be replayed in a
loop, so it is read once into two int32 arrays; the arrivals are generated
block by block (`ArrivalProcess`) and paired with rows in file order.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from dualpool.errors import WorkloadError
from dualpool.workload._arrivals import ArrivalProcess, check_seed
from dualpool.workload._base import Workload, check_positive
from dualpool.workload._dists import SplitTotal, TokenCdf
from dualpool.workload._files import column_indices, open_text, parse_count
from dualpool.workload._request import Request
from dualpool.workload._synthetic import SyntheticWorkload, TrafficClass

__all__ = ["LENGTH_COLUMNS", "CdfWorkload", "LengthTrace"]

LENGTH_COLUMNS = ("num_prefill_tokens", "num_decode_tokens")
_STREAM = 1  # block_rng stream id of length-trace arrivals


def _check_count(name: str, v: int | None) -> int | None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        raise WorkloadError(f"{name} must be an integer >= 0, got {v!r}")
    return v


class LengthTrace(Workload):
    """A length-only CSV replayed with synthetic arrivals.

    Args:
        path: CSV with `num_prefill_tokens,num_decode_tokens` (more columns ok).
        rate: mean arrival rate, req/s.
        cv: inter-arrival coefficient of variation (1 = Poisson; >1 bursty).
        seed: seeds the arrivals (the rows keep their file order).
        loop: when the file runs out, start over (needs num_requests or
            duration_s to end, else the stream is endless).
        num_requests, duration_s: stop after this many requests / seconds.
        category: stamped on every request.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        rate: float,
        cv: float = 1.0,
        seed: int = 0,
        loop: bool = False,
        num_requests: int | None = None,
        duration_s: float | None = None,
        category: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.arrivals = ArrivalProcess(rate=rate, cv=cv)
        self.seed = check_seed(seed)
        self.loop = bool(loop)
        self.num_requests = _check_count("num_requests", num_requests)
        self.duration_s = None if duration_s is None else check_positive("duration_s", duration_s)
        self.category = category
        self._rows: tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]] | None = None

    def describe(self) -> str:
        s = f"lengths {self.path.name}, {self.arrivals.describe()}, seed {self.seed}"
        return s + (", looped" if self.loop else "")

    def rate_hint(self) -> float | None:
        return self.arrivals.rate

    def duration_hint(self) -> float | None:
        return self.duration_s

    def rows(self) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
        """(prompt, output) token arrays of the file, read once and cached."""
        if self._rows is None:
            self._rows = read_lengths(self.path)
        return self._rows

    def __iter__(self) -> Iterator[Request]:
        prompt_a, output_a = self.rows()
        prompt, output = prompt_a.tolist(), output_a.tolist()
        n_rows = len(prompt)
        if n_rows == 0:
            return
        limit = math.inf if self.num_requests is None else self.num_requests
        end = math.inf if self.duration_s is None else self.duration_s
        i = 0  # requests yielded
        j = 0  # row index
        cat = self.category
        for block in self.arrivals.blocks(self.seed, _STREAM):
            for a in block.tolist():
                if i >= limit or a >= end:
                    return
                if j == n_rows:
                    if not self.loop:
                        return
                    j = 0
                yield Request(a, prompt[j], output[j], None, None, cat)
                i += 1
                j += 1


def read_lengths(path: Path) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """Validate and load a length-only CSV."""
    prompt: list[int] = []
    output: list[int] = []
    with open_text(path) as f:
        reader = csv.reader(f)
        ip, io = column_indices(path, next(reader, None), LENGTH_COLUMNS)
        need = max(ip, io) + 1
        for row in reader:
            if len(row) < need:
                if not row or not any(row):
                    continue
                raise WorkloadError(
                    f"{path}:{reader.line_num}: expected columns {','.join(LENGTH_COLUMNS)}, "
                    f"got {','.join(row)!r}"
                )
            line = reader.line_num
            prompt.append(parse_count(row[ip], path, line, LENGTH_COLUMNS[0]))
            output.append(parse_count(row[io], path, line, LENGTH_COLUMNS[1]))
    if not prompt:
        raise WorkloadError(f"{path}: no data rows after the header")
    too_big = max(max(prompt), max(output))
    if too_big >= 2**31:
        raise WorkloadError(f"{path}: token count {too_big} is implausibly large")
    return np.asarray(prompt, dtype=np.int32), np.asarray(output, dtype=np.int32)


class CdfWorkload(SyntheticWorkload):
    """Totals sampled from a CDF file, split into prompt and output.

    Args:
        path: `[[tokens, F], ...]` or `{"cdf": [[tokens, F], ...], ...}` JSON.
        rate, cv: arrivals (see ArrivalProcess).
        output_fraction, output_fraction_sd: the output share of each total,
            fixed (sd 0) or Beta-distributed with that mean and sd.
        min_tokens: the lower end of the first CDF segment (see TokenCdf).
        seed, duration_s, num_requests, category: as for SyntheticWorkload.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        rate: float,
        cv: float = 1.0,
        output_fraction: float = 0.2,
        output_fraction_sd: float = 0.0,
        min_tokens: int = 2,
        seed: int = 0,
        duration_s: float | None = None,
        num_requests: int | None = None,
        category: str | None = None,
    ) -> None:
        self.path = Path(path)
        cdf = TokenCdf.from_file(self.path, min_tokens=min_tokens)
        lengths = SplitTotal(cdf, output_fraction, output_fraction_sd)
        super().__init__(
            ArrivalProcess(rate=rate, cv=cv),
            [TrafficClass(lengths, 1.0, category)],
            seed=seed,
            duration_s=duration_s,
            num_requests=_check_count("num_requests", num_requests),
            name=f"cdf {self.path.name}",
        )
