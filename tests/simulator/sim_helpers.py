"""Small fleets and workloads for the simulator tests (Llama-3.1-8B on H100, TP 1)."""

from __future__ import annotations

from collections.abc import Iterator

from dualpool.engine import EngineConfig
from dualpool.simulator import FleetConfig, PoolConfig, RecordSink, dual_pool_fleet
from dualpool.workload import Request, Workload, preset

MODEL = "llama-3.1-8b"
GPU = "h100-80gb"


def small_fleet(short: int = 2, long: int = 1) -> FleetConfig:
    """The paper's two pools, with a smaller model so KV is plentiful and steps fast."""
    return dual_pool_fleet(MODEL, GPU, short=short, long=long)


def tiny_kv_fleet(instances: int = 1) -> FleetConfig:
    """A short pool with few KV blocks (preemptions happen) and a long pool."""
    from dualpool.engine import get_gpu, get_model

    short = EngineConfig(
        max_model_len=4096,
        max_num_seqs=64,
        max_num_batched_tokens=4096,
        gpu_memory_utilization=0.215,  # about 0.6 GiB of KV cache
    )
    long = EngineConfig(max_model_len=32768, max_num_seqs=8, max_num_batched_tokens=8192)
    return FleetConfig(
        get_model(MODEL),
        get_gpu(GPU),
        (PoolConfig("short", short, instances), PoolConfig("long", long, 1)),
    )


def workload(rate: float = 40.0, duration_s: float = 10.0, seed: int = 0) -> Workload:
    return preset("azure-conv-like", rate=rate, duration_s=duration_s, seed=seed)


class ListSink(RecordSink):
    def __init__(self) -> None:
        self.rows: list[tuple[object, ...]] = []

    def write(self, row: tuple[object, ...]) -> None:
        self.rows.append(row)

    def close(self) -> None:
        pass


def requests(*specs: tuple[float, int, int, int | None, int | None]) -> Iterator[Request]:
    """(arrival, prompt_tokens, output_tokens, max_tokens, prompt_bytes) tuples as Requests."""
    for a, p, o, m, b in specs:
        yield Request(a, p, o, m, b, "prose")
