from __future__ import annotations

import json
from pathlib import Path

import pytest
from wl_helpers import need

from dualpool.errors import WorkloadError
from dualpool.workload import (
    AzureTrace,
    CdfWorkload,
    JsonlWorkload,
    LengthTrace,
    SyntheticWorkload,
    Window,
    open_workload,
)
from dualpool.workload._factory import _parse_value


def test_presets() -> None:
    w = open_workload("azure-conv-like?seed=3&rate=2.5&num_requests=10")
    assert isinstance(w, SyntheticWorkload)
    assert w.seed == 3 and w.arrivals.rate == 2.5 and len(list(w)) == 10
    w2 = open_workload("synthetic:lognormal", rate=2.0, duration_s=10.0, seed=1)
    assert isinstance(w2, SyntheticWorkload) and w2.duration_s == 10.0
    # keyword options override the spec's
    w3 = open_workload("lognormal?seed=1", seed=2)
    assert isinstance(w3, SyntheticWorkload) and w3.seed == 2


def test_sniffing(traces: Path, shared_data: Path, tmp_path: Path) -> None:
    assert isinstance(open_workload(str(need(traces / "azure_2023_conv.csv"))), AzureTrace)
    lt = open_workload(str(need(traces / "bwb_lengths_llama2.csv")), rate=3.0)
    assert isinstance(lt, LengthTrace)
    cdf = open_workload(str(need(shared_data / "cdf" / "lmsys_cdf.json")) + "?rate=4")
    assert isinstance(cdf, CdfWorkload)
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps({"timestamp": 0, "body": {"prompt": "a"}}) + "\n")
    assert isinstance(open_workload(str(p)), JsonlWorkload)
    assert isinstance(open_workload(f"jsonl:{p}?rate=1"), JsonlWorkload)


def test_common_options(traces: Path) -> None:
    path = need(traces / "azure_2023_code.csv")
    w = open_workload(f"azure:{path}?rate=20&end_s=100&max_tokens=64&limit=50")
    reqs = list(w)
    assert len(reqs) == 50
    assert all(r.max_tokens == 64 and r.output_tokens <= 64 for r in reqs)
    assert all(r.arrival_s < 100 for r in reqs)
    sh = open_workload("lognormal?rate=3&duration_s=60&shard=1/3")
    assert isinstance(sh, Window) and sh.start_s == 20.0 and sh.end_s == 40.0
    scaled = list(open_workload("lognormal?rate=3&duration_s=60&rate_scale=2"))
    assert scaled[-1].arrival_s < 30.0


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("", "empty workload spec"),
        ("nosuchthing", "no such file, and not a preset"),
        ("synthetic:nope", "unknown synthetic preset"),
        ("lognormal?rate", "bad option 'rate'"),
        ("lognormal?bogus=1", "unknown option.*bogus.*allowed:"),
        ("lognormal?rate=abc", "rate must be"),
        ("lognormal?duration_s=9&shard=1-3", "shard must be 'i/n'"),
        ("lognormal?duration_s=9&shard=3/3", "shard index"),
        ("lognormal?limit=2.5", "limit must be an integer"),
        ("lognormal?max_tokens=2.5", "max_tokens"),
        ("lognormal?rate_scale=fast", "rate_scale must be a number"),
    ],
)
def test_errors(spec: str, match: str) -> None:
    with pytest.raises(WorkloadError, match=match):
        list(open_workload(spec))


def test_file_kind_errors(traces: Path, tmp_path: Path) -> None:
    lengths = need(traces / "sharegpt_8k_lengths_llama2.csv")
    with pytest.raises(WorkloadError, match=r"needs option.*rate"):
        open_workload(str(lengths))
    p = tmp_path / "weird.csv"
    p.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(WorkloadError, match=r"weird\.csv:1: cannot tell the trace kind"):
        open_workload(str(p))


def test_parse_value() -> None:
    assert _parse_value("true") is True
    assert _parse_value("none") is None
    assert _parse_value("3") == 3 and isinstance(_parse_value("3"), int)
    assert _parse_value("2.5") == 2.5
    assert _parse_value("output") == "output"
