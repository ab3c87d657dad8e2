"""The `dualpool` command as a user runs it: real subprocesses, stdout and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def dualpool(
    *args: str, stdin: str | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dualpool", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_json(out: str) -> dict:  # type: ignore[type-arg]
    return json.loads(out.strip().splitlines()[-1])


def test_demo_runs_the_whole_stack() -> None:
    r = dualpool("demo", "--requests", "60", "--json")
    assert r.returncode == 0, r.stderr
    s = last_json(r.stdout)
    assert s["ok"] == 60 and s["failed"] == 0
    assert s["per_pool"].get("short", 0) > 40 and s["per_pool"].get("long", 0) >= 1
    assert any(v < 4.0 for v in s["categories"].values())  # CJK learned below the prior


def test_offline_demo_learns_and_routes() -> None:
    r = dualpool("demo", "--offline", "--requests", "300", "--json")
    assert r.returncode == 0, r.stderr
    s = last_json(r.stdout)
    assert s["requests"] == 300 and s["per_pool"]["short"] > 250
    assert s["unsafe_misroutes"] <= 2


def test_route_reads_jsonl_and_reports_each_line(tmp_path: Path) -> None:
    f = tmp_path / "bodies.jsonl"
    f.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10})
        + "\n"
        + json.dumps({"messages": "oops"})
        + "\n"
        # certain: 400 KB is at least 3,125 tokens (128 bytes per token at most) + 64,000
        + json.dumps({"prompt": "x" * 400_000, "max_tokens": 64_000})
        + "\n"
    )
    r = dualpool("route", str(f))
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert lines[0]["pool"] == "short" and lines[0]["reason"] == "fits"
    assert "'messages' must be a list" in lines[1]["error"]
    assert lines[2]["reason"] == "rejected_too_long"
    assert "maximum context length is 65536 tokens" in lines[2]["message"]
    assert r.returncode == 1


def test_user_mistakes_are_one_line_errors() -> None:
    for args in (
        ("route", "--pools", "short:abc"),
        ("route", "/no/such/file.json"),
        ("demo", "--requests", "0"),
    ):
        r = dualpool(*args, stdin="{}")
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr
