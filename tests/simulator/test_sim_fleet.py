from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dualpool.engine import StepTimeParams, get_gpu, get_model, smallest_feasible_tp
from dualpool.errors import ConfigError
from dualpool.simulator import (
    LONG_ENGINE,
    SHORT_ENGINE,
    FleetConfig,
    dual_pool_fleet,
    homogeneous_fleet,
    load_fleet,
)


def test_default_two_pools_use_smallest_feasible_tp() -> None:
    f = dual_pool_fleet("llama-3-70b", "h100-80gb", short=3, long=2, b_short=6000)
    m, g = get_model("llama-3-70b"), get_gpu("h100-80gb")
    short, long = f.pools
    assert (short.name, long.name) == ("short", "long")
    assert short.engine.tensor_parallel_size == smallest_feasible_tp(m, g, SHORT_ENGINE)
    assert long.engine.tensor_parallel_size == smallest_feasible_tp(m, g, LONG_ENGINE)
    assert short.engine.max_num_seqs == 128 and long.engine.max_model_len == 65536
    assert f.pool_specs[0].effective_threshold == 6000
    assert f.num_gpus == 3 * 4 + 2 * 4
    h = homogeneous_fleet("llama-3-70b", "h100-80gb", instances=5)
    assert len(h.pools) == 1 and h.pools[0].engine.max_model_len == 65536


def test_yaml_roundtrip_and_default_tp(tmp_path: Path) -> None:
    p = tmp_path / "fleet.yaml"
    p.write_text(
        "model: llama-3.1-8b\ngpu: h100-80gb\npools:\n"
        "  - {name: long, instances: 1, engine: {max_model_len: 32768, max_num_seqs: 8}}\n"
        "  - {name: short, instances: 2, threshold: 3000,\n"
        "     engine: {max_model_len: 4096, max_num_seqs: 64, tensor_parallel_size: 2}}\n"
    )
    f = load_fleet(p)
    assert [x.name for x in f.pools] == ["short", "long"]  # ordered by context
    assert f.pools[0].engine.tensor_parallel_size == 2
    assert f.pools[1].engine.tensor_parallel_size == 1
    assert FleetConfig.from_mapping(f.as_dict()) == f


def test_as_dict_keeps_step_params_and_weight_dtype() -> None:
    """A fleet written back (`simulate --json` reports its config) keeps its calibration and dtype."""
    f = FleetConfig.from_mapping(
        {
            "model": "llama-3-70b",
            "weight_dtype": "fp8",
            "gpu": "h100-80gb",
            "step_params": {"flops_efficiency": 0.61, "step_overhead_s": 0.003},
            "pools": [{"name": "all", "instances": 2, "engine": {"tensor_parallel_size": 2}}],
        }
    )
    d = f.as_dict()
    assert d["weight_dtype"] == "fp8"
    assert d["step_params"] == {"flops_efficiency": 0.61, "step_overhead_s": 0.003}
    assert FleetConfig.from_mapping(d) == f
    assert "step_params" not in dataclasses.replace(f, step_params=StepTimeParams()).as_dict()


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("model: nope\ngpu: h100-80gb\npools: [{name: a, engine: {}}]", "model"),
        ("model: llama-3.1-8b\ngpu: h100-80gb\npools: []", "pools"),
        (
            "model: llama-3.1-8b\ngpu: h100-80gb\npools: [{name: a, engine: {max_num_seqs: -1}}]",
            "pools[0].engine.max_num_seqs",
        ),
        (
            "model: llama-3.1-8b\ngpu: h100-80gb\npools: [{name: a, instances: 0, engine: {}}]",
            "pools[0].instances",
        ),
        (
            "model: llama-3.1-8b\ngpu: h100-80gb\npools: [{name: a, engine: {bogus: 1}}]",
            "pools[0].engine.bogus",
        ),
        (
            "model: llama-3.1-8b\ngpu: h100-80gb\npools: [{name: a, threshold: 99999, engine: {}}]",
            "pools[0].threshold",
        ),
    ],
)
def test_yaml_errors_name_the_field(tmp_path: Path, text: str, field: str) -> None:
    p = tmp_path / "f.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_fleet(p)
    assert field in str(e.value)
    assert "\n" not in str(e.value)
