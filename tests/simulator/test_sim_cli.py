from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dualpool.cli.main import main

BASE = ["simulate", "--workload", "azure-conv-like", "--rate", "20", "--duration", "5",
        "--model", "llama-3.1-8b"]  # fmt: skip


def test_json_prints_one_object(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_csv = tmp_path / "r.csv"
    assert (
        main([*BASE, "--short", "2", "--long", "1", "--json", "--requests-out", str(out_csv)]) == 0
    )
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    d = json.loads(out)
    assert set(d["pools"]) == {"short", "long"}
    assert d["totals"]["requests"] > 0
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == d["totals"]["requests"]


def test_sized_homogeneous_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*BASE, "--homogeneous", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert set(d["pools"]) == {"all"} and d["sizing"]["all"]["instances"] >= 1
    assert main([*BASE, "--short", "1", "--long", "1", "--balancer", "rr"]) == 0
    assert "Latency" in capsys.readouterr().out


def test_processes(capsys: pytest.CaptureFixture[str]) -> None:
    args = [*BASE, "--short", "1", "--long", "1", "--processes", "2", "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["shards"] == 2


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--rate", "x"], "--rate"),
        (["--balancer", "zz"], "--balancer"),
        (["--short", "2"], "--short"),
        (["--fleet", "/nonexistent.yaml"], "--fleet"),
        (["--gpu", "tpu"], "--gpu"),
        (["--processes", "0"], "--processes"),
        (["--homogeneous", "3", "--b-short", "4000"], "--b-short"),
    ],
)
def test_bad_flags_give_one_line(
    capsys: pytest.CaptureFixture[str], extra: list[str], flag: str
) -> None:
    try:
        code = main([*BASE, *extra])
    except SystemExit as e:
        code = int(e.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err, err
