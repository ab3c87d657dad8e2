"""The request-body paths of both faces under coverage-guided fuzzing (atheris).

A short run in the suite (a few seconds a target); `benchmarks/fuzz_parser.py` runs
them at length. Each target allows only the face's own 400 family; anything else
makes libFuzzer stop with the traceback and a non-zero exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dualpool.testing.fuzz_targets import SEEDS, emulator_target, gateway_target

pytest.importorskip("atheris", reason="atheris (the `fuzz` extra) is not installed")
pytest.importorskip("tiktoken", reason="the emulator target counts tokens with tiktoken")


@pytest.mark.parametrize("target", ["gateway", "emulator"])
def test_atheris_finds_nothing(target: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "dualpool.testing.fuzz_targets", target,
         "-runs=10000", "-max_len=4096", "-seed=1", f"-artifact_prefix={tmp_path}/"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done 10000 runs" in proc.stderr
    assert not list(tmp_path.glob("crash-*"))


def test_the_seeds_pass_both_targets() -> None:
    """The seeds (the deep one was a RecursionError in the emulator) end in 400s at worst."""
    for target in (gateway_target(), emulator_target()):
        for seed in SEEDS:
            target(seed)


def test_emulator_answers_deep_nesting_as_400_like_fastapi() -> None:
    from dualpool.emulator._openai import ApiError, load_body

    with pytest.raises(ApiError) as err:
        load_body(b"[" * 100_000)
    assert err.value.status == 400
    assert "error parsing the body" in str(err.value)
