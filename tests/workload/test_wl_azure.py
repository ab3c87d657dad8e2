from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest
from wl_helpers import need

from dualpool.errors import WorkloadError
from dualpool.workload import AzureTrace
from dualpool.workload._azure import TimestampParser


def write(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_reads_shared_conv_trace(traces: Path) -> None:
    path = need(traces / "azure_2023_conv.csv")
    with path.open() as f:
        rows = list(csv.reader(f))[1:]
    reqs = list(AzureTrace(path))
    assert len(reqs) == len(rows)
    assert reqs[0].arrival_s == 0.0
    assert all(a.arrival_s <= b.arrival_s for a, b in itertools.pairwise(reqs))
    assert [(r.prompt_tokens, r.output_tokens) for r in reqs[:50]] == [
        (int(row[1]), int(row[2])) for row in rows[:50]
    ]
    # ~1 hour of traffic
    assert 3000 < reqs[-1].arrival_s < 4000


def test_reiterable_and_category(traces: Path) -> None:
    w = AzureTrace(need(traces / "azure_2023_code.csv"), category="code")
    a = list(itertools.islice(w, 100))
    b = list(itertools.islice(w, 100))
    assert a == b and a[0].category == "code"


@pytest.mark.parametrize(
    ("stamps", "expected"),
    [
        (["2023-11-16 18:17:03.9799600", "2023-11-16 18:17:04.0319600"], [0.0, 0.052]),
        (["2024-05-10 00:00:00.010", "2024-05-10 00:00:01.510"], [0.0, 1.5]),
        (["2024-05-10 23:59:59.5", "2024-05-11 00:00:00.5"], [0.0, 1.0]),
        (["2024-05-10 00:00:00.000000+00:00", "2024-05-10 00:00:02.250000+00:00"], [0.0, 2.25]),
        (["2024-05-10T00:00:00Z", "2024-05-10T00:01:00Z"], [0.0, 60.0]),
        (["100.5", "101.75"], [0.0, 1.25]),
    ],
)
def test_timestamp_formats(tmp_path: Path, stamps: list[str], expected: list[float]) -> None:
    body = "".join(f"{s},10,5\n" for s in stamps)
    p = write(tmp_path, "TIMESTAMP,ContextTokens,GeneratedTokens\n" + body)
    got = [r.arrival_s for r in AzureTrace(p)]
    assert got == pytest.approx(expected, abs=1e-9)


def test_seven_fractional_digits_keep_precision() -> None:
    parse = TimestampParser()
    a = parse("2023-11-16 18:17:03.9799600")
    b = parse("2023-11-23 18:17:03.9799601")
    assert b - a == pytest.approx(7 * 86400 + 1e-7, abs=1e-9)


def test_column_order_and_extra_columns(tmp_path: Path) -> None:
    p = write(tmp_path, "GeneratedTokens,Foo,ContextTokens,TIMESTAMP\n5,x,10,1.0\n6,y,11,2.0\n")
    reqs = list(AzureTrace(p))
    assert [(r.prompt_tokens, r.output_tokens, r.arrival_s) for r in reqs] == [
        (10, 5, 0.0),
        (11, 6, 1.0),
    ]


def test_blank_lines_skipped(tmp_path: Path) -> None:
    p = write(tmp_path, "TIMESTAMP,ContextTokens,GeneratedTokens\n1,2,3\n\n2,3,4\n")
    assert len(list(AzureTrace(p))) == 2


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", r"t\.csv:1: empty file"),
        ("time,in,out\n1,2,3\n", r"t\.csv:1: bad header .*expected columns TIMESTAMP"),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n1,2,3\n2,abc,3\n",
            r"t\.csv:3: ContextTokens .*'abc'",
        ),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n1,2,-3\n", r"t\.csv:2: GeneratedTokens .*-3"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n1,2,3.5\n", r"t\.csv:2: GeneratedTokens"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n1,2\n", r"t\.csv:2: expected 3 columns"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n5,2,3\n4,2,3\n", r"t\.csv:3: .*must be sorted"),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00,1,1\nyesterday,1,1\n",
            r"t\.csv:3: bad timestamp 'yesterday'",
        ),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n1.5,1,1\n2024-05-10 00:00:00,1,1\n",
            r"t\.csv:3: bad timestamp .*expected seconds",
        ),
    ],
)
def test_bad_input(tmp_path: Path, text: str, match: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(WorkloadError, match=match):
        list(AzureTrace(p))


def test_integral_float_counts_accepted(tmp_path: Path) -> None:
    p = write(tmp_path, "TIMESTAMP,ContextTokens,GeneratedTokens\n1,12.0,3\n")
    assert next(iter(AzureTrace(p))).prompt_tokens == 12


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="no such file"):
        list(AzureTrace(tmp_path / "nope.csv"))
    with pytest.raises(WorkloadError, match="is a directory"):
        list(AzureTrace(tmp_path))


def test_streams_lazily(tmp_path: Path) -> None:
    # a bad row far down is not reached when only the head is consumed
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"] + [f"{i},10,5" for i in range(1000)]
    lines.append("1000,bad,5")
    p = write(tmp_path, "\n".join(lines) + "\n")
    assert len(list(itertools.islice(AzureTrace(p), 10))) == 10
