"""`dualpool bench` end to end against real emulated vLLM instances (real sockets)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dualpool.cli.main import main
from dualpool.emulator import EmulatorConfig
from dualpool.emulator.testing import EmulatorThread

WL = "lognormal?prompt_max=3000&output_max=300&seed=4"


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorThread]:
    cfg = EmulatorConfig(
        model="llama-3.1-8b", gpu="h100-80gb", port=0, speedup=50, max_model_len=8192, instances=2
    )
    with EmulatorThread(cfg) as e:
        yield e


def _json(capsys: pytest.CaptureFixture[str], args: list[str]) -> dict[str, object]:
    assert main(["bench", *args, "--json", "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    doc = json.loads(out[0])
    assert isinstance(doc, dict)
    return doc


def test_json_has_vllm_fields_and_trace_token_counts(
    emu: EmulatorThread, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "requests.csv"
    doc = _json(
        capsys,
        [WL, "--url", emu.urls[0], "--num-requests", "40", "--rate", "40", "--detailed",
         "--goodput", "ttft:2000", "tpot:100", "--out", str(out)],
    )  # fmt: skip
    for k in ("date", "backend", "model_id", "num_prompts", "request_rate", "duration",
              "completed", "failed", "request_goodput", "mean_ttft_ms", "p99_ttft_ms",
              "median_tpot_ms", "p90_itl_ms", "p50_e2el_ms", "ttfts", "itls", "output_lens"):  # fmt: skip
        assert k in doc, k
    assert doc["completed"] == 40 and doc["failed"] == 0 and doc["model_id"] == "llama-3.1-8b"
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 40
    # The emulator counts usage with the Llama-3 tokenizer; prompts were sized with it.
    exact = sum(r["prompt_tokens"] == r["target_prompt_tokens"] for r in rows)
    assert exact >= 32, [(r["prompt_tokens"], r["target_prompt_tokens"]) for r in rows]
    # x-dualpool-output-tokens: the emulator generated the trace's output lengths.
    assert all(r["completion_tokens"] == r["target_output_tokens"] for r in rows)


def test_closed_loop_no_hint_and_parquet(
    emu: EmulatorThread, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "r.parquet"
    doc = _json(
        capsys,
        [WL, "--url", emu.urls[1], "--num-requests", "25", "--users", "4", "--no-output-hint",
         "--endpoint", "completions", "--out", str(out)],
    )  # fmt: skip
    assert doc["completed"] == 25 and doc["backend"] == "openai"
    table = pq.read_table(out)
    assert table.num_rows == 25
    rows = table.to_pylist()
    assert all(r["completion_tokens"] == r["target_output_tokens"] for r in rows)
    assert all(len(r["itl_s"]) == r["chunks"] - 1 for r in rows)


def test_whole_answers_without_streaming(
    emu: EmulatorThread, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = _json(capsys, [WL, "--url", emu.urls[0], "--num-requests", "10", "--rate", "50",
                         "--no-stream", "--detailed"])  # fmt: skip
    assert doc["completed"] == 10
    assert doc["ttfts"] == doc["latencies"]  # no stream: the first token is the whole answer
    assert all(n > 0 for n in doc["output_lens"])


def test_jsonl_bodies_as_given(
    emu: EmulatorThread, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bodies.jsonl"
    with path.open("w") as f:
        for i in range(12):
            body = {"messages": [{"role": "user", "content": f"question {i} " * (i + 1)}],
                    "max_tokens": 5 + i}  # fmt: skip
            f.write(json.dumps({"timestamp": i * 0.05, "body": body}) + "\n")
    doc = _json(capsys, [str(path), "--url", emu.urls[0], "--detailed"])
    assert doc["completed"] == 12
    assert doc["output_lens"] == [5 + i for i in range(12)]


def test_compare_two_endpoints(emu: EmulatorThread, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _json(capsys, [WL, "--compare", *emu.urls, "--num-requests", "20", "--rate", "40"])
    arms = doc["arms"]
    assert isinstance(arms, dict) and set(arms) == {"A", "B"}
    assert all(a["completed"] == 20 for a in arms.values())


def test_time_bounds(emu: EmulatorThread, capsys: pytest.CaptureFixture[str]) -> None:
    t = time.perf_counter()
    doc = _json(capsys, [WL, "--url", emu.urls[0], "--rate", "5", "--duration", "1"])
    assert time.perf_counter() - t < 10
    assert 0 < int(str(doc["completed"])) < 20


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--speedup", "0"], "--speedup"),
        (["--users", "0"], "--users"),
        (["--goodput", "ttft"], "--goodput"),
        (["--out", "x.txt"], "--out"),
        (["--url", "http://127.0.0.1:9"], "cannot reach"),
        (["nope-preset"], "no such file"),
    ],
)
def test_bad_input_is_one_line(
    extra: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["bench", "--no-progress", "--num-requests", "3", *extra]
    if "--url" not in extra:
        args += ["--url", "http://127.0.0.1:9"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_ctrl_c_stops_and_reports(emu: EmulatorThread, tmp_path: Path) -> None:
    out = tmp_path / "partial.csv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dualpool", "bench", WL, "--url", emu.urls[0], "--rate", "20",
         "--num-requests", "100000", "--no-progress", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )  # fmt: skip
    assert proc.stderr is not None
    line = proc.stderr.readline()  # the run has started: Ctrl-C is ours from here
    assert "sending" in line, line
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "stopped early: interrupted" in stdout
    rows = list(csv.DictReader(out.open()))
    assert 5 < len(rows) < 1000
    assert {r["error_kind"] for r in rows} <= {"", "aborted"}


def test_api_key_and_headers_are_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    from dualpool.cli.bench import config_from_args
    from dualpool.cli.main import build_parser

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    args = build_parser().parse_args(["bench", "--header", "x-team=a"])
    cfg = config_from_args(args)
    assert ("authorization", "Bearer sk-test") in cfg.headers
    assert ("x-team", "a") in cfg.headers
