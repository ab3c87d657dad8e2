"""Every number quoted in docs/engine-model.md, computed from the model.

    python -m dualpool.engine.report            # all sections
    python -m dualpool.engine.report --bench    # plus a scheduler speed test

This module prints (it is the one place in dualpool.engine that does); the
functions it calls are the pure ones of the package.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

from dualpool.engine.catalog import BUILTIN_GPUS, BUILTIN_MODELS, get_gpu, get_model
from dualpool.engine.config import EngineConfig
from dualpool.engine.memory import kv_bytes_per_token, plan_memory, smallest_feasible_tp
from dualpool.engine.scheduler import Scheduler
from dualpool.engine.specs import GPUSpec, ModelSpec
from dualpool.errors import InfeasibleConfigError

__all__ = ["SaturatedRun", "main", "saturated_throughput"]

GiB = 1 << 30

# The paper's pool configs (Llama-3-70B BF16, TP 2, A100-80GB).
PAPER_LONG = EngineConfig(
    tensor_parallel_size=2, max_model_len=65536, max_num_seqs=16, max_num_batched_tokens=8192
)
PAPER_SHORT = EngineConfig(
    tensor_parallel_size=2, max_model_len=8192, max_num_seqs=128, max_num_batched_tokens=16384
)


@dataclass(frozen=True, slots=True)
class SaturatedRun:
    """A closed batch of identical requests run to completion on one instance."""

    requests: int
    makespan_s: float
    req_per_s: float
    mean_ttft_s: float
    mean_tpot_s: float
    preemptions: int
    steps: int
    fast_forward_steps: int
    wall_s: float


def saturated_throughput(
    model: ModelSpec,
    gpu: GPUSpec,
    config: EngineConfig,
    prompt_tokens: int,
    output_tokens: int,
    num_requests: int,
) -> SaturatedRun:
    """Throughput of one instance kept full: all requests queued at t = 0."""
    sched = Scheduler.from_specs(model, gpu, config)
    reqs = [
        sched.add_request(str(i), prompt_tokens, output_tokens, 0.0) for i in range(num_requests)
    ]
    now = 0.0
    steps = ff_steps = 0
    t0 = time.perf_counter()
    while sched.has_unfinished_requests:
        ff = sched.fast_forward(now)
        if ff.steps:
            ff_steps += ff.steps
            now = ff.now
            continue
        _, res = sched.step(now)
        steps += 1
        now = res.now
    wall = time.perf_counter() - t0
    ttft = [r.ttft for r in reqs if r.ttft is not None]
    tpot = [r.tpot for r in reqs if r.tpot is not None]
    return SaturatedRun(
        requests=num_requests,
        makespan_s=now,
        req_per_s=num_requests / now,
        mean_ttft_s=sum(ttft) / len(ttft),
        mean_tpot_s=sum(tpot) / len(tpot),
        preemptions=sched.num_preemptions_total,
        steps=steps + ff_steps,
        fast_forward_steps=ff_steps,
        wall_s=wall,
    )


def _catalog() -> Iterator[str]:
    yield "## Models (derived from config.json)"
    yield "| name | params | active | layers | q/kv heads | head_dim | KV B/token (TP1, BF16) |"
    yield "|---|---|---|---|---|---|---|"
    for m in BUILTIN_MODELS.values():
        kvb = kv_bytes_per_token(m, EngineConfig())
        yield (
            f"| {m.name} | {m.num_params / 1e9:.2f}B | {m.num_active_params / 1e9:.2f}B | "
            f"{m.num_layers} | {m.num_attention_heads}/{m.num_kv_heads} | {m.head_dim} | "
            f"{kvb:,} |"
        )
    yield ""
    yield "## GPUs"
    yield "| name | memory GiB | HBM GB/s | BF16 TFLOPS | FP8 TFLOPS | link GB/s/dir | $/h |"
    yield "|---|---|---|---|---|---|---|"
    for g in BUILTIN_GPUS.values():
        yield (
            f"| {g.name} | {g.memory_gib:.2f} | {g.hbm_bandwidth / 1e9:,.0f} | "
            f"{g.bf16_flops / 1e12:,.1f} | {g.fp8_flops / 1e12:,.1f} | "
            f"{g.interconnect_bandwidth / 1e9:,.0f} | {g.price_per_hour:.2f} |"
        )


def _plan_line(label: str, model: ModelSpec, gpu: GPUSpec, config: EngineConfig) -> str:
    p = plan_memory(model, gpu, config, check=False)
    return (
        f"| {label} | {p.usable_bytes / GiB:.2f} | {p.weight_bytes / GiB:.2f} | "
        f"{p.activation_bytes / GiB:.2f} | {p.overhead_bytes / GiB:.2f} | "
        f"{p.kv_cache_bytes / GiB:.2f} | {p.kv_cache_tokens:,} | {p.max_concurrency:.2f} |"
    )


def _vllm_checks() -> Iterator[str]:
    yield "## Checks against vLLM start-up logs"
    yield "| setup | usable GiB | weights | activation | overhead | KV GiB | KV tokens | max conc. |"
    yield "|---|---|---|---|---|---|---|---|"
    llama8 = get_model("llama-3.1-8b")
    h100 = get_gpu("h100-80gb")
    yield _plan_line("Llama-3-8B, H100, TP1, 8K", llama8, h100, EngineConfig(max_model_len=8192))
    yield _plan_line(
        "Llama-3-8B, H100, TP2, 8K",
        llama8,
        h100,
        EngineConfig(tensor_parallel_size=2, max_model_len=8192),
    )
    qwen = get_model("qwen3-235b-a22b", "fp8")
    yield _plan_line(
        "Qwen3-235B-A22B-FP8, H100, TP4, 40K",
        qwen,
        h100,
        EngineConfig(tensor_parallel_size=4, max_model_len=40960),
    )


# Figures logged by vLLM: (setup, model, gpu, config, logged KV GiB, source).
_LOGGED_KV = [
    (
        "Llama-3-8B, TP1",
        "llama-3.1-8b",
        None,
        EngineConfig(max_model_len=8192),
        53.29,
        "vllm PR #10511",
    ),
    (
        "Qwen3-235B-A22B-FP8, TP4",
        "qwen3-235b-a22b",
        "fp8",
        EngineConfig(tensor_parallel_size=4, max_model_len=40960),
        8.11,
        "vllm issue #21348",
    ),
]


def _vllm_deltas() -> Iterator[str]:
    h100 = get_gpu("h100-80gb")
    for label, name, dtype, cfg, logged, source in _LOGGED_KV:
        m = get_model(name, "fp8" if dtype == "fp8" else None)
        ours = plan_memory(m, h100, cfg, check=False).kv_cache_bytes / GiB
        yield (
            f"{label} on H100: model KV {ours:.2f} GiB vs logged {logged:.2f} GiB ({source}): "
            f"{ours - logged:+.2f} GiB ({(ours - logged) / logged:+.0%})"
        )
    q = get_model("qwen3-235b-a22b")
    hit = 1 - (1 - q.num_experts_per_tok / q.num_experts) ** 64
    yield f"Qwen3-235B decode at batch 64 hits {hit:.1%} of the experts (uniform routing)."


def _paper() -> Iterator[str]:
    m = get_model("llama-3-70b")
    a100 = get_gpu("a100-80gb")
    yield "## The paper's pools: Llama-3-70B BF16 on A100-80GB"
    yield (
        f"Llama-3-70B max_position_embeddings = {m.max_position_embeddings} "
        "(a 65,536-token max_model_len needs rope scaling or VLLM_ALLOW_LONG_MAX_MODEL_LEN)."
    )
    kvb1 = kv_bytes_per_token(m, EngineConfig())
    kvb2 = kv_bytes_per_token(m, PAPER_LONG)
    need = 16 * 65536 * kvb2
    yield (
        f"KV bytes/token: {kvb1:,} at TP1, {kvb2:,} per GPU at TP2; 16 sequences x 65,536 "
        f"tokens need {need / GiB:.1f} GiB per GPU at TP2."
    )
    yield "| pool | TP | usable GiB | weights | activation | overhead | KV GiB | KV tokens | max conc. |"
    yield "|---|---|---|---|---|---|---|---|---|"
    for name, cfg in (("long 64K/16", PAPER_LONG), ("short 8K/128", PAPER_SHORT)):
        for tp in (2, 4, 8):
            c = replace(cfg, tensor_parallel_size=tp)
            line = _plan_line(name, m, a100, c)
            yield line.replace(f"| {name} |", f"| {name} | {tp} |", 1)
        try:
            tp_min = smallest_feasible_tp(m, a100, cfg)
            yield f"smallest feasible TP for {name}: {tp_min}"
        except InfeasibleConfigError as e:
            yield f"{name}: {e}"
        try:
            plan_memory(m, a100, cfg)
        except InfeasibleConfigError as e:
            yield f"vLLM at TP2 ({name}): {e}"
    yield ""
    peak = 2 * a100.bf16_flops / (2 * m.num_active_params)
    yield (
        f"Roofline bound: 2 x A100 at 100% of BF16 peak prefill at most {peak:,.0f} tokens/s "
        f"of Llama-3-70B, so 11.2 req/s per TP2 instance allows at most {peak / 11.2:,.0f} "
        f"prompt tokens per request and 2.8 req/s at most {peak / 2.8:,.0f}, before any decode."
    )
    yield ""
    yield "16 x 64K sequences need per GPU, by TP:"
    for tp in (2, 4, 8):
        c = replace(PAPER_LONG, tensor_parallel_size=tp)
        p = plan_memory(m, a100, c, check=False)
        need = 16 * p.blocks_per_max_len_seq * p.block_size * p.kv_bytes_per_token
        yield (
            f"  TP{tp}: need {need / GiB:.1f} GiB, have {max(p.kv_cache_bytes, 0) / GiB:.1f} GiB "
            f"-> {p.max_concurrency:.2f} concurrent 64K sequences"
        )


def _throughput() -> Iterator[str]:
    m = get_model("llama-3-70b")
    a100 = get_gpu("a100-80gb")
    yield "## Saturated per-instance throughput (identical requests, default StepTimeParams)"
    yield "| pool | TP | prompt | output | req/s | req/s per GPU | mean TTFT s | mean TPOT ms | preemptions |"
    yield "|---|---|---|---|---|---|---|---|---|"
    cases = [
        ("short 8K/128", PAPER_SHORT, 4, 1024, 256, 1024),
        ("short 8K/128", PAPER_SHORT, 8, 1024, 256, 1024),
        ("long 64K/16", PAPER_LONG, 4, 16384, 512, 64),
        ("long 64K/16", PAPER_LONG, 8, 16384, 512, 64),
        ("long 64K/16", PAPER_LONG, 4, 1024, 256, 256),
    ]
    rates: dict[tuple[str, int, int], float] = {}
    for name, cfg, tp, prompt, out, n in cases:
        c = replace(cfg, tensor_parallel_size=tp)
        r = saturated_throughput(m, a100, c, prompt, out, n)
        rates[(name, tp, prompt)] = r.req_per_s
        yield (
            f"| {name} | {tp} | {prompt} | {out} | {r.req_per_s:.2f} | {r.req_per_s / tp:.2f} | "
            f"{r.mean_ttft_s:.2f} | {r.mean_tpot_s * 1e3:.1f} | {r.preemptions} |"
        )
    rho = rates[("short 8K/128", 4, 1024)] / rates[("long 64K/16", 4, 1024)]
    yield ""
    yield f"rho (short/long pool, 1024+256-token requests, TP4) = {rho:.2f}"


def _bench() -> Iterator[str]:
    yield "## Scheduler speed (this machine, one core)"
    m, g = get_model("llama-3.1-8b"), get_gpu("h100-80gb")
    for out_tokens in (64, 256):
        r = saturated_throughput(m, g, EngineConfig(max_num_seqs=128), 512, out_tokens, 4000)
        yield (
            f"llama-3.1-8b H100, 4,000 requests of 512+{out_tokens} tokens, batch 128: "
            f"{r.requests / r.wall_s:,.0f} simulated requests/s of wall time "
            f"({r.steps:,} steps, {r.fast_forward_steps:,} of them fast-forwarded)"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m dualpool.engine.report", description=__doc__)
    ap.add_argument("--bench", action="store_true", help="also time the scheduler")
    args = ap.parse_args(argv)
    sections = [_catalog(), _vllm_checks(), _vllm_deltas(), _paper(), _throughput()]
    if args.bench:
        sections.append(_bench())
    for section in sections:
        for line in section:
            print(line)
        print()


if __name__ == "__main__":
    main()
