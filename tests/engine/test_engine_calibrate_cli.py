"""`dualpool calibrate`, and --catalog / --step-params on simulate and plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_engine_fidelity import write_run

from dualpool.cli.main import main
from dualpool.engine import StepTimeParams
from dualpool.engine.step_params import step_params_from_mapping

SIM = ["simulate", "--workload", "azure-conv-like", "--rate", "10", "--duration", "3",
       "--model", "llama-3.1-8b", "--short", "1", "--long", "1", "--json"]  # fmt: skip


def test_calibrate_writes_a_step_params_fragment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_run(tmp_path, "h100_llama31_8b")
    out = tmp_path / "params.yaml"
    run = str(tmp_path / "h100_llama31_8b_meta.json")
    assert main(["calibrate", run, "--out", str(out), "--max-replays", "12", "--split"]) == 0
    err = capsys.readouterr().err
    assert "fitted" in err and "holdout (second half)" in err
    data = yaml.safe_load(out.read_text())
    params = step_params_from_mapping(data["step_params"])
    assert 0 < (params.flops_efficiency or 0) <= 1
    # simulate reads it
    assert main([*SIM, "--step-params", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["requests"] > 0


def test_calibrate_json_and_holdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path, "h100_a")
    write_run(tmp_path, "h100_b")
    a, b = (str(tmp_path / f"h100_{x}_requests.jsonl") for x in "ab")
    assert main(["calibrate", a, "--holdout", b, "--max-replays", "8", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["gpu"] == "h100-80gb" and d["holdout"]["run"] == "h100_b"
    assert set(d["error_fitted"]) == {
        "ttft_p50", "ttft_p90", "e2e_p50", "e2e_p90", "tpot_p50", "tpot_p90"
    }  # fmt: skip


def test_calibrate_unknown_gpu_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_run(tmp_path, "b300_llama31_8b")
    assert main(["calibrate", str(tmp_path / "b300_llama31_8b_meta.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--catalog FILE" in err


def test_catalog_flag_adds_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cat = tmp_path / "cat.yaml"
    cat.write_text(
        "gpus:\n  l40s: {memory_gib: 44.5, hbm_bandwidth_gbps: 864, bf16_tflops: 362,\n"
        "         fp8_tflops: 733, interconnect_gbps: 32, price_per_hour: 0.99, link: pcie}\n"
    )
    assert main([*SIM, "--gpu", "l40s", "--catalog", str(cat)]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["requests"] > 0
    assert main([*SIM, "--gpu", "l40s"]) == 2  # not without the catalog
    assert "l40s" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("gpus: [1, 2]\n", "--catalog"),
        ("step_params: {flops_efficiency: 3}\n", "flops_efficiency"),
        ("step_params: {warp_speed: 9}\n", "warp_speed"),
    ],
)
def test_bad_catalog_or_params_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    f = tmp_path / "x.yaml"
    f.write_text(text)
    flag = "--catalog" if text.startswith("gpus") else "--step-params"
    assert main([*SIM, flag, str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err


def test_step_params_none_means_the_gpus_own() -> None:
    p = StepTimeParams()
    assert p.resolved(0.75, 0.88) == (0.75, 0.88)
    assert p.resolved(0.0, 0.0) == (0.55, 0.8)
    assert StepTimeParams(flops_efficiency=0.3).resolved(0.75, 0.88) == (0.3, 0.88)
