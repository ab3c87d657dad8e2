"""`dualpool plan`: JSON shape, one-line errors, the HTML report in a real browser."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from dualpool.cli.main import main

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "plan",
    "azure-conv-like?num_requests=1500&seed=2",
    "--rate",
    "30",
    "--model",
    "llama-3.1-8b",
    "--gpu",
    "h100-80gb",
    "--sim-requests",
    "300",
    "--sim-instances",
    "2",
    "--processes",
    "1",
    "--min-windows",
    "3",
    "--max-windows",
    "3",
]


def test_json_is_one_object_with_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*ARGS, "--no-simulate", "--json", "--price", "1.5"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    p = json.loads(out[0])
    for key in (
        "inputs",
        "alpha",
        "rho",
        "closed_form",
        "discrete",
        "homogeneous",
        "split",
        "saving",
        "analytic_saving",
        "usd_saved_per_year",
        "recommendation",
        "sweep",
        "three_pool",
    ):
        assert key in p, key
    assert set(p["sweep"]) == {"rows", "basis", "best", "range_80"}
    assert [r["b_short"] for r in p["sweep"]["rows"]] == [2048, 4096, 8192, 16384, 32768]
    assert p["inputs"]["price_per_gpu_hour"] == 1.5  # overrides the catalog's 2.99
    assert p["homogeneous"]["gpus"] >= 1
    assert p["homogeneous"]["usd_per_year"] == pytest.approx(p["homogeneous"]["gpus"] * 1.5 * 8760)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--rate", "-1"], "--rate"),
        (["--gpu", "nope"], "nope"),
        (["--short", "8192/128"], "--short"),
        (["--b-short", "0"], "--b-short"),
        (["--utilization", "1.5"], "--utilization"),
        (["--processes", "0"], "--processes"),
        (["--precision", "0"], "--precision"),
        (["--max-windows", "2"], "--max-windows"),
    ],
)
def test_bad_input_is_one_line(
    extra: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*ARGS, "--no-simulate", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_bad_workload_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "/no/such/trace.csv", "--rate", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such file" in err[0]


@pytest.mark.slow
def test_report_renders_in_chromium(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*ARGS, "--report", str(tmp_path / "rep")]) == 0
    page = tmp_path / "rep" / "index.html"
    text = page.read_text()
    # Saving vs B_short, vs rate, per window; GPUs; TTFT/TPOT; the budget CDF.
    assert text.count("<img class='plot'") == 6
    # A page to read: the recommendation and caveats before anything else,
    # HTML tables, no terminal dump.
    assert text.index("Recommendation") < text.index("Caveats") < text.index("<table")
    assert "<pre>" not in text and "± " in text
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium absent (apt-get install -y chromium) to check rendering")
    # A script in the page writes what the browser decoded of each image into
    # the DOM; --dump-dom prints the DOM after load.
    probe = tmp_path / "rep" / "probe.html"
    probe.write_text(
        text.replace(
            "</body>",
            "<script>window.addEventListener('load',()=>{const r=[...document.images]"
            ".map(i=>i.complete&&i.naturalWidth>0?i.naturalWidth:0);"
            "const p=document.createElement('p');p.id='probe';p.textContent='W='+r.join(',');"
            "document.body.appendChild(p);});</script></body>",
        )
    )
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chrome'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        probe.as_uri(),
    ]
    assert shutil.which(cmd[0])
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    line = dom.split('<p id="probe">', 1)[1]
    widths = [int(w) for w in line.split("W=")[1].split("<")[0].split(",")]
    assert len(widths) == 6 and all(w > 100 for w in widths), widths


def test_report_without_simulation_has_no_empty_plots(tmp_path: Path) -> None:
    assert main([*ARGS, "--no-simulate", "--report", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "index.html").read_text()
    # No TTFT/TPOT or per-window figure when nothing was simulated.
    assert text.count("<img class='plot'") == 4
    assert "TTFT and TPOT" not in text and "no interval" in text


@pytest.mark.slow
def test_simulated_sweep_has_an_interval_at_every_b_short(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [*ARGS[:-4], "--min-windows", "2", "--max-windows", "2", "--simulate-sweep", "--json"]
    assert main(args) == 0
    p = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert p["sweep"]["basis"] == "saving"
    for row in p["sweep"]["rows"]:
        ci = row["saving_ci"]
        assert ci["n"] == 2 and ci["low"] <= row["saving"] <= ci["high"]
    # The chosen B_short's row is the plan's own saving.
    row = next(r for r in p["sweep"]["rows"] if r["b_short"] == p["inputs"]["b_short"])
    assert row["saving"] == p["saving"]


def test_adaptive_flag_sizes_the_whole_split_fleet_with_the_controller(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([*ARGS, "--no-simulate", "--json", "--adaptive"]) == 0
    d = json.loads(capsys.readouterr().out)
    a = d["adaptive"]
    planned = d["split"]["instances"]
    assert a["at_planned"]["instances"] == planned
    for side in ("static", "adaptive"):
        at = a["at_planned"][side]
        assert at["slo_ratio"] > 0 and 0 <= at["windows_meeting"] <= a["windows"] == 3
        assert all(n >= 1 for n in a["sized"][side]["instances"].values())
    assert a["gpus_saved_by_controller"] == (
        a["sized"]["static"]["gpus"] - a["sized"]["adaptive"]["gpus"]
    )
    assert a["saving_points_from_controller"] == pytest.approx(
        a["gpus_saved_by_controller"] / d["homogeneous"]["gpus"]
    )
    # The controller never moves B_short above the short pool's max_model_len.
    short_len = d["split"]["pools"][0]["config"]["max_model_len"]
    assert a["at_planned"]["adaptive"]["threshold_mean"] <= short_len
