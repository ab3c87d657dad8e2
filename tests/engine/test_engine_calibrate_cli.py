"""`dualpool calibrate`, and --catalog / --step-params on simulate and plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_engine_fidelity import write_run
from test_engine_fit import KV_TRUTH, kv_bound_run

from dualpool.cli.common import catalog_from_args
from dualpool.cli.emulate import _config as emulate_config
from dualpool.cli.main import build_parser, main
from dualpool.engine import (
    Catalog,
    EngineConfig,
    MemoryParams,
    StepTimeParams,
    get_gpu,
    get_model,
    plan_memory,
)
from dualpool.engine.measured import memory_params_yaml, step_params_yaml
from dualpool.engine.memory import GiB, non_torch_for_blocks
from dualpool.engine.step_params import step_params_from_mapping
from dualpool.errors import CatalogError, ConfigError
from dualpool.simulator import FleetConfig

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


# -- memory_params: the machine's non-torch memory (a KV-bound fit) ----------------------

LLAMA_4090 = ["--model", "llama-3.1-8b", "--gpu", "rtx-4090"]
ENGINE_4090 = ["--max-model-len", "32768", "--max-num-seqs", "128",
               "--max-num-batched-tokens", "2048"]  # fmt: skip


def _fragment(tmp_path: Path, blocks: int) -> tuple[Path, int]:
    """A calibrate fragment whose memory_params: give `blocks` on the 4090 run's settings."""
    model, gpu = get_model("llama-3.1-8b"), get_gpu("rtx-4090")
    cfg = EngineConfig(max_model_len=32768, max_num_seqs=128, max_num_batched_tokens=2048)
    nt = non_torch_for_blocks(model, gpu, cfg, blocks)
    nt = round(round(nt / GiB, 4) * GiB)  # the 4 decimals of GiB the fragment carries
    f = tmp_path / "fit.yaml"
    f.write_text(step_params_yaml(StepTimeParams(flops_efficiency=0.8)) + memory_params_yaml(nt))
    return f, plan_memory(model, gpu, cfg, MemoryParams(non_torch_bytes=nt)).num_gpu_blocks


def test_memory_params_round_trip_through_the_cli_loader(tmp_path: Path) -> None:
    f, blocks = _fragment(tmp_path, 2932)
    assert blocks == 2932
    data = yaml.safe_load(f.read_text())
    assert set(data) == {"step_params", "memory_params"}
    # emulate: its config from the real parser, the scheduler it builds
    args = build_parser().parse_args(["emulate", *LLAMA_4090, *ENGINE_4090, "--step-params",
                                      str(f)])  # fmt: skip
    sched = emulate_config(args).build_scheduler()
    assert sched.kv.num_gpu_blocks == 2932
    assert sched.timing.flops_efficiency == pytest.approx(0.8)
    # plan and simulate resolve their GPU through the same catalog_from_args
    gpu = catalog_from_args(args).gpu("rtx-4090")
    assert gpu.non_torch_bytes == round(data["memory_params"]["non_torch_gib"] * GiB)
    # without the flag: the default account (vLLM's logged 2,588)
    plain = build_parser().parse_args(["emulate", *LLAMA_4090, *ENGINE_4090])
    assert emulate_config(plain).build_scheduler().kv.num_gpu_blocks == 2588


def test_memory_params_in_simulate_and_a_fleet_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f, _ = _fragment(tmp_path, 2932)
    assert main([*SIM, "--step-params", str(f)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["totals"]["requests"] > 0
    assert out["config"]["memory_params"]["non_torch_gib"] == pytest.approx(
        yaml.safe_load(f.read_text())["memory_params"]["non_torch_gib"]
    )
    fleet = FleetConfig.from_mapping(
        {
            "model": "llama-3.1-8b",
            "gpu": "rtx-4090",
            "memory_params": {"non_torch_gib": 0.25},
            "pools": [{"name": "all", "instances": 1, "engine": {"max_model_len": 32768}}],
        }
    )
    assert fleet.gpu.non_torch_bytes == round(0.25 * GiB)
    again = FleetConfig.from_mapping(fleet.as_dict())  # round-trips
    assert again.gpu.non_torch_bytes == fleet.gpu.non_torch_bytes


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("memory_params: {non_torch_gib: -0.5}\n", "memory_params.non_torch_gib"),
        ("memory_params: {non_torch_gib: lots}\n", "memory_params.non_torch_gib"),
        ("memory_params: {kv_blocks: 3000}\n", "memory_params.kv_blocks"),
        ("memory_params: [1]\n", "memory_params"),
    ],
)
def test_bad_memory_params_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    f = tmp_path / "x.yaml"
    f.write_text("step_params: {flops_efficiency: 0.7}\n" + text)
    assert main([*SIM, "--step-params", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "--step-params" in err
    fleet = {"model": "llama-3.1-8b", "gpu": "h100-80gb", **yaml.safe_load(text),
             "pools": [{"name": "all", "instances": 1, "engine": {}}]}  # fmt: skip
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        FleetConfig.from_mapping(fleet)


def test_calibrate_fits_and_writes_the_kv_capacity_of_a_kv_bound_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, truth = kv_bound_run(KV_TRUTH)
    stem = "rtx4090_synthetic"
    (tmp_path / f"{stem}_meta.json").write_text(
        json.dumps(
            {
                "model": run.meta["model"],
                "vllm_version": "0.19.0",
                "engine_kwargs": run.engine_kwargs,
                "num_gpu_blocks": 2588,
            }
        )
    )
    (tmp_path / f"{stem}_requests.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "input_toks": r.input_tokens,
                    "output_toks": r.output_tokens,
                    "queued_ts": 1000 + r.arrival,
                    "first_token_ts": 1000 + r.arrival + r.ttft,
                    "last_token_ts": 1000 + r.arrival + r.e2e,
                }
            )
            + "\n"
            for r in run.requests
        )
    )
    (tmp_path / f"{stem}_timeseries.csv").write_text(
        "t,running,waiting\n" + "".join(f"{t},{r},{w}\n" for t, r, w in run.timeseries)
    )
    out = tmp_path / "fit.yaml"
    meta = str(tmp_path / f"{stem}_meta.json")
    assert main(["calibrate", meta, "--out", str(out), "--max-replays", "80", "--json"]) == 0
    captured = capsys.readouterr()
    d = json.loads(captured.out)
    blocks = d["kv"]["fitted_blocks"]
    assert abs(blocks / truth - 1) < 0.01 and d["kv"]["logged_blocks"] == 2588
    diff = f"{blocks / 2588 - 1:+.1%}"  # ~ +11.7%
    assert f"the fitted capacity differs from the logged one by {diff}" in captured.err
    f = yaml.safe_load(out.read_text())
    assert f["memory_params"]["non_torch_gib"] == d["kv"]["non_torch_gib"]
    # the fragment gives the fitted capacity back through the CLI's loader
    args = build_parser().parse_args(["emulate", *LLAMA_4090, *ENGINE_4090, "--step-params",
                                      str(out)])  # fmt: skip
    assert emulate_config(args).build_scheduler().kv.num_gpu_blocks == blocks


def test_a_catalog_gpu_may_carry_its_machines_non_torch_memory(tmp_path: Path) -> None:
    base = "gpus:\n  box4090: {memory_gib: 23.64, hbm_bandwidth_gbps: 1008, bf16_tflops: 165.2,\n"
    cat = tmp_path / "cat.yaml"
    cat.write_text(base + "    interconnect_gbps: 32, link: pcie, non_torch_gib: 0.25}\n")
    gpu = Catalog().load_yaml(cat).gpu("box4090")
    assert gpu.non_torch_bytes == round(0.25 * GiB)
    assert Catalog().gpu("rtx-4090").non_torch_bytes is None  # the built-in: not measured
    cat.write_text(base + "    interconnect_gbps: 32, link: pcie, non_torch_gib: -1}\n")
    with pytest.raises(CatalogError, match="non_torch_gib"):
        Catalog().load_yaml(cat)
