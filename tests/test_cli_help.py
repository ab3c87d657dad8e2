"""Every flag of every subcommand explains itself, and the shared flags (model, GPU,
SLOs) have the same names, units and defaults everywhere.

Walks the parser `dualpool` builds, so subcommands added later are covered too.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from dualpool.cli.main import build_parser


def subparsers(
    parser: argparse.ArgumentParser, path: str = "dualpool"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subparsers(sub, f"{path} {name}")


def test_every_flag_has_help_text() -> None:
    missing = [
        f"{path}: {'/'.join(a.option_strings) or a.dest}"
        for path, parser in subparsers(build_parser())
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
        and a.help is not argparse.SUPPRESS
        and not (a.help or "").strip()
    ]
    assert not missing, f"flags without help: {missing}"


def _actions(name: str) -> dict[str, argparse.Action]:
    parser = dict(subparsers(build_parser()))[f"dualpool {name}"]
    return {s: a for a in parser._actions for s in a.option_strings}


SHARED = {"--model": "llama-3-70b", "--gpu": "a100-80gb"}
SLOS = {"--slo-ttft": 2.0, "--slo-tpot": 80.0}


@pytest.mark.parametrize("name", ["emulate", "simulate", "plan"])
def test_model_and_gpu_flags_agree(name: str) -> None:
    acts = _actions(name)
    for flag, default in SHARED.items():
        assert acts[flag].default == default, (name, flag)


@pytest.mark.parametrize("name", ["simulate", "plan"])
def test_slo_flags_agree_in_name_unit_and_default(name: str) -> None:
    acts = _actions(name)
    for flag, default in SLOS.items():
        assert acts[flag].default == default, (name, flag)
    assert "seconds" in (acts["--slo-ttft"].help or "")
    assert "milliseconds" in (acts["--slo-tpot"].help or "")
    # The old spellings still parse, hidden from --help.
    assert acts["--ttft-slo"].help is argparse.SUPPRESS
    assert acts["--tpot-slo"].help is argparse.SUPPRESS


def test_old_slo_spellings_mean_the_same(capsys: pytest.CaptureFixture[str]) -> None:
    p = build_parser()
    a = p.parse_args(["plan", "wl", "--rate", "1", "--tpot-slo", "50", "--ttft-slo", "1.5"])
    assert a.slo_tpot == 50.0 and a.slo_ttft == 1.5
    assert "deprecated" in capsys.readouterr().err
    b = p.parse_args(["plan", "wl", "--rate", "1", "--slo-tpot", "50", "--slo-ttft", "1.5"])
    assert b.slo_tpot == a.slo_tpot and b.slo_ttft == a.slo_ttft


def test_tpot_given_in_seconds_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    from dualpool.cli.main import main

    assert main(["simulate", "--workload", "azure-conv-like", "--slo-tpot", "0.08"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--slo-tpot" in err and "milliseconds" in err
