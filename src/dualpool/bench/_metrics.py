"""Per-request results and the run's summary, defined as `vllm bench serve` defines them.

The definitions follow vLLM's benchmark (vllm/benchmarks/serve.py,
`calculate_metrics`, and vllm/benchmarks/lib/endpoint_request_func.py,
`async_request_openai_chat_completions`):

- start: the clock just before the request is written.
- TTFT: the first SSE message whose `choices` is non-empty, minus start
  (for chat that is vLLM's role chunk, sent with the first token).
- ITL: the gaps between consecutive messages with non-empty `choices`; the
  run's ITL percentiles are over all gaps of all successful requests.
- E2E ("latency", "e2el"): the last message with non-empty `choices` minus
  start; the trailing usage chunk and `[DONE]` do not count.
- output tokens: `usage.completion_tokens` (vLLM tokenizes the text when
  usage is absent; we count the token messages instead).
- TPOT: (E2E - TTFT) / (output tokens - 1), only for output tokens > 1
  (the percentiles skip the others; for goodput their TPOT counts as 0).
- success: HTTP 200 and at least one token message; everything else failed.
- goodput: successful requests meeting every SLO given (ttft, tpot, e2el in
  ms; `value >= metric`), divided by the run's duration.
- percentiles: numpy's linear interpolation (`np.percentile`), in ms; with no
  values, 0 (vLLM's `values or 0`).

A non-streamed request (no `--stream`) has TTFT = E2E and no ITL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "METRICS",
    "RequestResult",
    "Summary",
    "parse_goodput",
    "summarize",
]

# The metrics with percentiles, as vLLM names them.
METRICS = ("ttft", "tpot", "itl", "e2el")


@dataclass(slots=True)
class RequestResult:
    """What happened to one request (all times in seconds)."""

    # position in the workload
    index: int
    # the arm it went to ("" for a single endpoint; A/B runs name them)
    arm: str = ""
    # content category of the prompt ("prose", "code", "zh", "ja", "given")
    category: str = ""
    # the trace's prompt and output tokens (-1 when unknown)
    target_prompt_tokens: int = -1
    target_output_tokens: int = -1
    # when it was due and when it was sent, seconds since the run started
    scheduled_s: float = 0.0
    start_s: float = 0.0
    # client-side wait for a free slot (--max-concurrency)
    queue_s: float = 0.0
    status: int = 0
    success: bool = False
    # "" when successful; else http_4xx, http_5xx, connect, reset, timeout,
    # no_token, protocol, aborted
    error_kind: str = ""
    error: str = ""
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    # from usage (-1 when the answer had none)
    prompt_tokens: int = -1
    completion_tokens: int = -1
    # token-bearing SSE messages received
    chunks: int = 0
    # the gateway's x-dualpool-pool answer header, when present
    pool: str = ""

    @property
    def output_tokens(self) -> int:
        """Output length as vLLM's benchmark counts it (usage, else chunks)."""
        return self.completion_tokens if self.completion_tokens > 0 else self.chunks

    @property
    def tpot_s(self) -> float:
        """(E2E - TTFT) / (output - 1); 0 for one output token (vLLM's rule)."""
        n = self.output_tokens
        return (self.e2e_s - self.ttft_s) / (n - 1) if n > 1 else 0.0


def parse_goodput(items: Sequence[str], flag: str = "--goodput") -> dict[str, float]:
    """vLLM's `--goodput ttft:500 tpot:50` -> {"ttft": 500.0, "tpot": 50.0} (ms)."""
    from dualpool.errors import ConfigError

    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or name not in ("ttft", "tpot", "e2el"):
            raise ConfigError(flag, f"expected ttft:MS, tpot:MS or e2el:MS, got {item!r}")
        try:
            ms = float(value)
        except ValueError:
            raise ConfigError(flag, f"not a number of milliseconds in {item!r}") from None
        if not ms >= 0:
            raise ConfigError(flag, f"must be >= 0 ms, got {item!r}")
        out[name] = ms
    return out


def _stats(values: Sequence[float], percentiles: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray(values if len(values) else [0.0], dtype=np.float64) * 1000.0
    return {
        "mean": float(np.mean(arr)),
        "median": float(np.median(arr)),
        "std": float(np.std(arr)),
        "p": [(p, float(np.percentile(arr, p))) for p in percentiles],
    }


def _p_word(p: float) -> str:
    return str(int(p)) if int(p) == p else str(p)


@dataclass(slots=True)
class Summary:
    """The run's numbers; `as_vllm()` gives `vllm bench serve --save-result`'s fields."""

    duration: float
    completed: int
    failed: int
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    request_goodput: float | None
    output_throughput: float
    total_token_throughput: float
    max_output_tokens_per_s: float
    max_concurrent_requests: int
    # {"ttft": {"mean", "median", "std", "p": [(99.0, ms), ...]}, ...}
    stats: dict[str, dict[str, Any]]
    errors_by_kind: dict[str, int]

    def metric(self, name: str, what: str) -> float:
        """`metric("ttft", "p99")`, `metric("e2el", "mean")`: milliseconds."""
        s = self.stats[name]
        if what in ("mean", "median", "std"):
            return float(s[what])
        for p, v in s["p"]:
            if "p" + _p_word(p) == what:
                return float(v)
        raise KeyError(f"{name} {what} not computed")

    def as_vllm(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "duration": self.duration,
            "completed": self.completed,
            "failed": self.failed,
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
            "request_throughput": self.request_throughput,
            "request_goodput": self.request_goodput,
            "output_throughput": self.output_throughput,
            "total_token_throughput": self.total_token_throughput,
            "max_output_tokens_per_s": self.max_output_tokens_per_s,
            "max_concurrent_requests": self.max_concurrent_requests,
        }
        for name in METRICS:
            s = self.stats[name]
            out[f"mean_{name}_ms"] = s["mean"]
            out[f"median_{name}_ms"] = s["median"]
            out[f"std_{name}_ms"] = s["std"]
            for p, v in s["p"]:
                out[f"p{_p_word(p)}_{name}_ms"] = v
        return out


def summarize(
    results: Sequence[RequestResult],
    duration: float,
    *,
    percentiles: Sequence[float] = (50.0, 90.0, 99.0),
    goodput: Mapping[str, float] | None = None,
) -> Summary:
    """The run's summary (see the module doc for each definition)."""
    ok = [r for r in results if r.success]
    ttfts = [r.ttft_s for r in ok]
    e2els = [r.e2e_s for r in ok]
    outs = [r.output_tokens for r in ok]
    tpots = [r.tpot_s for r in ok if r.output_tokens > 1]
    itls = [x for r in ok for x in r.itl_s]
    total_in = sum(max(0, r.prompt_tokens) for r in ok)
    total_out = sum(outs)
    good: float | None = None
    if goodput:
        slo = {k: v / 1000.0 for k, v in goodput.items()}
        n_good = 0
        for r in ok:
            if "ttft" in slo and r.ttft_s > slo["ttft"]:
                continue
            if "tpot" in slo and r.tpot_s > slo["tpot"]:
                continue
            if "e2el" in slo and r.e2e_s > slo["e2el"]:
                continue
            n_good += 1
        good = n_good / duration if duration > 0 else 0.0
    dur = duration if duration > 0 else math.inf
    kinds: dict[str, int] = {}
    for r in results:
        if not r.success:
            kinds[r.error_kind or "error"] = kinds.get(r.error_kind or "error", 0) + 1
    peak_tok, peak_conc = _peaks(ok)
    return Summary(
        duration=duration,
        completed=len(ok),
        failed=len(results) - len(ok),
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        request_throughput=len(ok) / dur,
        request_goodput=good,
        output_throughput=total_out / dur,
        total_token_throughput=(total_in + total_out) / dur,
        max_output_tokens_per_s=peak_tok,
        max_concurrent_requests=peak_conc,
        stats={
            "ttft": _stats(ttfts, percentiles),
            "tpot": _stats(tpots, percentiles),
            "itl": _stats(itls, percentiles),
            "e2el": _stats(e2els, percentiles),
        },
        errors_by_kind=kinds,
    )


def _peaks(ok: Sequence[RequestResult]) -> tuple[float, int]:
    """Peak output tokens in any one-second bucket, and peak concurrency (vLLM's)."""
    if not ok:
        return 0.0, 0
    t0 = min(r.start_s for r in ok)
    t1 = max(r.start_s + r.e2e_s for r in ok)
    buckets = np.zeros(math.ceil(t1 - t0) + 1)
    events: list[tuple[float, int]] = []
    for r in ok:
        t = r.start_s + r.ttft_s
        times = [t]
        for gap in r.itl_s:
            t += gap
            times.append(t)
        idx = (np.asarray(times) - t0).astype(np.int64)
        idx = idx[(idx >= 0) & (idx < buckets.size)]
        np.add.at(buckets, idx, 1)
        events.append((r.start_s, 1))
        events.append((r.start_s + r.e2e_s, -1))
    events.sort()
    cur = peak = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return float(buckets.max()), peak
