"""`dualpool demo --compare`: arms for one GPU budget, a real (small) A/B, the HTML page."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from dualpool.cli.main import main
from dualpool.compare import CompareSettings, _load, plan_arms

CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.slow
def test_both_arms_get_the_same_gpus() -> None:
    s = CompareSettings(requests=150, rate=7.0)
    plan = plan_arms(s, _load(s), windows=4, predict_arms=False)
    gpus = {arm: plan.gpus(arm) for arm in plan.arms}
    assert gpus["homogeneous"] == plan.budget_gpus
    assert gpus["split"] <= plan.budget_gpus and gpus["split"] > plan.budget_gpus - 4
    assert [p.name for p in plan.arms["split"]] == ["short", "long"]
    assert all(p.instances >= 1 for pools in plan.arms.values() for p in pools)
    # the budget is the smaller planned fleet: one arm has what it needs
    planned = plan.planned
    assert plan.budget_gpus == min(
        planned["homogeneous"] * 4, (planned["short"] + planned["long"]) * 4
    )
    # the verified planner's windows: 4 disjoint windows of the replay's size
    assert plan.planner_windows == 4 and plan.window_requests == 150
    assert not plan.overlapping
    assert plan.saving_ci[0] <= plan.saving <= plan.saving_ci[1]


@pytest.mark.slow
def test_compare_runs_and_the_report_renders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["demo", "--compare", "--workload", "azure-conv-like", "--requests", "80"]
    args += ["--rate", "8", "--speedup", "10"]
    assert main([*args, "--report", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "homogeneous" in out and "split" in out and "planner" in out.lower()
    assert "predicted" in out and "measured" in out
    page = tmp_path / "rep" / "index.html"
    text = page.read_text()
    assert text.count("<img class='plot'") == 3  # TTFT, TPOT, E2E CDFs
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium absent (apt-get install -y chromium) to check rendering")
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
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'chrome'}",
        "--virtual-time-budget=5000", "--dump-dom", probe.as_uri(),
    ]  # fmt: skip
    assert shutil.which(cmd[0])
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    line = dom.split('<p id="probe">', 1)[1]
    widths = [int(w) for w in line.split("W=")[1].split("<")[0].split(",")]
    assert len(widths) == 3 and all(w > 100 for w in widths), widths


@pytest.mark.slow
def test_compare_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["demo", "--compare", "--workload", "azure-conv-like", "--requests", "40"]
    args += ["--rate", "8", "--speedup", "10", "--json"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(doc["arms"]) == {"homogeneous", "split"}
    for arm in doc["arms"].values():
        assert arm["completed"] + arm["failed"] == 40
        for k in ("p99_ttft_ms", "p99_tpot_ms", "goodput_fraction_ci90", "preemptions",
                  "predicted_ttft_p99_s", "predicted_ttft_p99_range_s",
                  "predicted_goodput_fraction", "learned_bytes_per_token"):  # fmt: skip
            assert k in arm, k
    assert doc["planner"]["windows"] >= 4 and not doc["planner"]["overlapping_windows"]
    for m in ("goodput", "ttft_p99_s", "tpot_p99_s"):
        d = doc["difference"][m]
        assert set(d) == {"predicted", "predicted_range90", "measured", "measured_ci90"}


@pytest.mark.parametrize(
    ("extra", "needle"),
    [(["--rate", "0"], "--rate"), (["--workload", "/no/such.csv"], "no such file")],
)
def test_bad_compare_input_is_one_line(
    extra: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--compare", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
