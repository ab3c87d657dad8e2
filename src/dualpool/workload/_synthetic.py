"""Seeded synthetic workloads and the named presets.

A `SyntheticWorkload` is an `ArrivalProcess` plus one or more traffic classes
(a `LengthModel`, a weight and a category). It is generated block by block
(see `_arrivals`): block k's arrivals, class choices and lengths all come from
one generator seeded by (seed, k), so the stream is deterministic, streams in
constant memory (one block at a time), and can seek to any time instantly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from dualpool.errors import WorkloadError
from dualpool.workload._arrivals import DAY_S, ArrivalProcess, block_rng, check_seed
from dualpool.workload._base import Workload, check_positive
from dualpool.workload._dists import (
    Independent,
    LengthModel,
    LogNormalMixture,
    SplitTotal,
    TokenCdf,
)
from dualpool.workload._request import Request, requests_of

__all__ = [
    "AGENT_HEAVY_CDF_POINTS",
    "AZURE_2024_WEEK_CODE_ROWS",
    "AZURE_2024_WEEK_CONV_ROWS",
    "AZURE_CDF_POINTS",
    "LMSYS_CDF_POINTS",
    "PRESETS",
    "SyntheticWorkload",
    "TrafficClass",
    "agent_heavy_lengths",
    "azure_code_lengths",
    "azure_conv_lengths",
    "lmsys_lengths",
    "preset",
]

_STREAM = 0  # block_rng stream id of synthetic workloads


@dataclass(frozen=True)
class TrafficClass:
    """One kind of traffic in a synthetic mix."""

    lengths: LengthModel
    # relative share of requests (normalized over the classes)
    weight: float = 1.0
    # content class stamped on the requests ("code", "prose", ...), or None
    category: str | None = None


class SyntheticWorkload(Workload):
    """Requests with synthetic arrivals and lengths, deterministic per seed.

    Args:
        arrivals: the arrival process (rate, burstiness, diurnal cycle).
        classes: the traffic mix (a single LengthModel means one class).
        seed: any non-negative int.
        duration_s: stop at this time (None: no time limit).
        num_requests: stop after this many (None: no count limit). With both
            None the stream is endless; cap it with `limit()` or `window()`.
        name: used by describe().
    """

    def __init__(
        self,
        arrivals: ArrivalProcess,
        classes: Sequence[TrafficClass] | LengthModel,
        *,
        seed: int = 0,
        duration_s: float | None = None,
        num_requests: int | None = None,
        name: str = "synthetic",
    ) -> None:
        self.arrivals = arrivals
        self.classes: tuple[TrafficClass, ...] = (
            (TrafficClass(classes),) if isinstance(classes, LengthModel) else tuple(classes)
        )
        if not self.classes:
            raise WorkloadError("a synthetic workload needs at least one traffic class")
        for c in self.classes:
            check_positive("traffic class weight", c.weight)
        w = np.array([c.weight for c in self.classes])
        self._cum = np.cumsum(w / w.sum())
        self.seed = check_seed(seed)
        self.duration_s = None if duration_s is None else check_positive("duration_s", duration_s)
        if num_requests is not None and (
            isinstance(num_requests, bool) or not isinstance(num_requests, int) or num_requests < 0
        ):
            raise WorkloadError(f"num_requests must be an integer >= 0, got {num_requests!r}")
        self.num_requests = num_requests
        self.name = name

    def describe(self) -> str:
        parts = [self.name, self.arrivals.describe(), f"seed {self.seed}"]
        if self.duration_s is not None:
            parts.append(f"{self.duration_s:g} s")
        if self.num_requests is not None:
            parts.append(f"{self.num_requests} requests")
        return ", ".join(parts)

    def duration_hint(self) -> float | None:
        return self.duration_s

    def rate_hint(self) -> float | None:
        return self.arrivals.rate

    def _block(self, k: int, start_s: float = -math.inf, end_s: float = math.inf) -> list[Request]:
        """The requests of block k with start_s <= arrival < end_s (a pure function
        of seed and k: the whole block is drawn, then cut, so cuts never shift
        the random streams)."""
        rng = block_rng(self.seed, _STREAM, k)
        arr = self.arrivals.block(rng, k)
        n = int(arr.shape[0])
        if n == 0:
            return []
        lo = 0 if arr[0] >= start_s else int(np.searchsorted(arr, start_s, side="left"))
        hi = n if arr[-1] < end_s else int(np.searchsorted(arr, end_s, side="left"))
        if len(self.classes) == 1:
            cls = self.classes[0]
            p, o = cls.lengths.sample(rng, n)
            if hi <= lo:
                return []
            return requests_of(
                arr[lo:hi].tolist(),
                p[lo:hi].tolist(),
                o[lo:hi].tolist(),
                [cls.category] * (hi - lo),
            )
        which = np.minimum(
            np.searchsorted(self._cum, rng.random(n), side="right"), len(self._cum) - 1
        )
        prompt = np.empty(n, dtype=np.int64)
        output = np.empty(n, dtype=np.int64)
        for i, cls in enumerate(self.classes):
            idx = np.flatnonzero(which == i)
            if idx.size:
                prompt[idx], output[idx] = cls.lengths.sample(rng, int(idx.size))
        if hi <= lo:
            return []
        cats = [c.category for c in self.classes]
        return requests_of(
            arr[lo:hi].tolist(),
            prompt[lo:hi].tolist(),
            output[lo:hi].tolist(),
            [cats[w] for w in which[lo:hi].tolist()],
        )

    def iter_blocks(
        self, start_s: float = -math.inf, end_s: float = math.inf
    ) -> Iterator[list[Request]]:
        if self.num_requests is not None:
            # the count cap depends on everything before start_s: no seeking
            yield from super().iter_blocks(start_s, end_s)
            return
        end = end_s if self.duration_s is None else min(end_s, self.duration_s)
        block_s = self.arrivals.block_s
        k = max(0, math.floor(start_s / block_s)) if start_s > 0 else 0
        while k * block_s < end:
            block = self._block(k, start_s, end)
            k += 1
            if block:
                yield block

    def _blocks_from(self, k: int) -> Iterator[Request]:
        end = math.inf if self.duration_s is None else self.duration_s
        block_s = self.arrivals.block_s
        while k * block_s < end:
            yield from self._block(k, -math.inf, end)
            k += 1

    def __iter__(self) -> Iterator[Request]:
        if self.num_requests is None:
            yield from self._blocks_from(0)
            return
        left = self.num_requests
        if left == 0:
            return
        for r in self._blocks_from(0):
            yield r
            left -= 1
            if left == 0:
                return

    def iter_window(self, start_s: float, end_s: float) -> Iterator[Request]:
        if self.num_requests is not None:
            # the count cap depends on everything before start_s: no seeking
            yield from super().iter_window(start_s, end_s)
            return
        k = max(0, math.floor(start_s / self.arrivals.block_s)) if start_s > 0 else 0
        for r in self._blocks_from(k):
            if r.arrival_s >= end_s:
                return
            if r.arrival_s >= start_s:
                yield r


# --- fitted length models -------------------------------------------------
#
# Derived from the shared Azure 2023 one-hour traces (azure_2023_{code,conv}.csv,
# 8,819 and 19,366 rows): a 2-component Gaussian mixture fitted by EM (300
# iterations) to log(ContextTokens) and log(GeneratedTokens) separately, then
# truncated to the observed [min, max]. Check against the data (p10/p50/p90/p99):
#   code prompt  data 147/1469/5188/7436   fit 133/1435/4140/6719
#   code output  data   7/  13/  55/ 251   fit   8/  13/  63/ 204
#   conv prompt  data 207/1020/2734/4142   fit 242/ 788/2467/6156
#   conv output  data  54/ 129/ 424/ 601   fit  48/ 148/ 417/ 491
# (conv lengths are lumpy, a few prompt templates dominate; a smooth fit is
# only approximate.) Log-lengths are nearly uncorrelated, so drawn independently.


def azure_code_lengths() -> Independent:
    """Lengths like the Azure 2023 code service."""
    return Independent(
        LogNormalMixture(((0.3055, 5.5183, 1.3069), (0.6945, 7.6498, 0.7243)), lo=3, hi=7437),
        LogNormalMixture(((0.6587, 2.3651, 0.3829), (0.3413, 3.6047, 0.8990)), lo=6, hi=1899),
    )


def azure_conv_lengths() -> Independent:
    """Lengths like the Azure 2023 conversation service."""
    return Independent(
        LogNormalMixture(((0.0139, 2.9935, 0.6968), (0.9861, 6.6847, 0.8876)), lo=2, hi=14050),
        LogNormalMixture(((0.7223, 4.6392, 0.7080), (0.2777, 6.0067, 0.0500)), lo=7, hi=1000),
    )


# CDFs of total tokens per request, from the vLLM Semantic Router fleet
# simulator (Apache-2.0), copied from shared data/cdf/{lmsys,azure}_cdf.json so
# the presets work without the shared data.
LMSYS_CDF_POINTS: tuple[tuple[int, float], ...] = (
    (64, 0.13143902904110133),
    (128, 0.2359468756113688),
    (256, 0.3824772725584252),
    (512, 0.6383272206772047),
    (768, 0.7579833930565839),
    (1024, 0.8306616774845409),
    (1536, 0.9088599256575542),
    (2048, 0.9482847003642829),
    (3072, 0.9728657502222596),
    (4096, 0.9837422332946185),
    (6144, 0.9928852149665558),
    (8192, 0.996530520768585),
    (12288, 0.998633010324239),
    (16384, 0.9992645001201069),
    (24576, 0.9996557761504877),
    (32768, 0.9997944562625215),
    (49152, 0.999839032012818),
    (65536, 1.0),
)
AZURE_CDF_POINTS: tuple[tuple[int, float], ...] = (
    (64, 0.00837324818165691),
    (128, 0.02817101295015079),
    (256, 0.06758914316125599),
    (512, 0.2886287032109278),
    (768, 0.36427177576725206),
    (1024, 0.40447046301224054),
    (1536, 0.6568742238779492),
    (2048, 0.779847436579741),
    (3072, 0.8686535391165514),
    (4096, 0.8982082668085861),
    (6144, 0.9758027319496186),
    (8192, 0.9999645201348235),
    (12288, 0.9999645201348235),
    (16384, 1.0),
    (24576, 1.0),
    (32768, 1.0),
    (49152, 1.0),
    (65536, 1.0),
)


# A synthetic agent/RAG mix from the same simulator (Apache-2.0), copied from shared
# data/cdf/agent_heavy_cdf.json ("statistics-based-synthetic", 100,000 samples, seed
# 42): 35% RAG (median 1,800 tokens), 40% SWE-bench (Jimenez et al., 2024; median
# 10,000), 25% BFCL (Yan et al., 2024; median 3,000). Median ~3,800 tokens, 26%
# above 8,192: the long tail a short pool cannot take.
AGENT_HEAVY_CDF_POINTS: tuple[tuple[int, float], ...] = (
    (64, 0.0),
    (128, 0.0),
    (256, 0.00007),
    (512, 0.00407),
    (768, 0.02237),
    (1024, 0.05757),
    (1536, 0.15871),
    (2048, 0.26459),
    (3072, 0.43163),
    (4096, 0.53802),
    (6144, 0.65987),
    (8192, 0.74042),
    (12288, 0.85213),
    (16384, 0.91717),
    (24576, 0.97282),
    (32768, 0.99046),
    (49152, 0.99849),
    (65536, 1.0),
)


def agent_heavy_lengths(
    output_fraction: float = 0.02, output_fraction_sd: float = 0.015
) -> SplitTotal:
    """Totals from the agent-heavy CDF, split by a Beta-distributed output share.

    NOTE: the CDF gives totals only. Agent and RAG requests are prompt-heavy
    (retrieved documents, repository context, tool schemas) with short answers
    (an agent step's thought and action, a tool call, a grounded reply); the
    2% ± 1.5% output share is an assumption, not a fit (output p10/p50/p90
    about 10/60/320 tokens, mean 130). Pass your own when it matters: the A/B on this
    mix depends on it (docs/bench.md).
    """
    return SplitTotal(
        TokenCdf(AGENT_HEAVY_CDF_POINTS, source="agent_heavy_cdf"),
        output_fraction,
        output_fraction_sd,
    )


def lmsys_lengths(output_fraction: float = 0.5, output_fraction_sd: float = 0.25) -> SplitTotal:
    """Totals from the LMSYS CDF, split by a Beta-distributed output share.

    NOTE: the CDF gives only totals (mean ~670 tokens, so it counts the
    conversation context, not single turns). The 0.5 ± 0.25 output share is
    a wide guess, not a fit; pass your own when it matters.
    """
    return SplitTotal(
        TokenCdf(LMSYS_CDF_POINTS, source="lmsys_cdf"), output_fraction, output_fraction_sd
    )


# The Azure 2024 week-long traces (AzureLLMInferenceTrace_{code,conv}_1week.csv).
AZURE_2024_WEEK_CODE_ROWS = 16_800_000
AZURE_2024_WEEK_CONV_ROWS = 27_300_000
_WEEK_S = 7 * DAY_S


def _int_opt(name: str, v: int | None) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise WorkloadError(f"{name} must be an integer, got {v!r}")
    return v


def preset(
    name: str,
    *,
    rate: float | None = None,
    cv: float = 1.0,
    seed: int = 0,
    duration_s: float | None = None,
    num_requests: int | None = None,
    diurnal_amplitude: float | None = None,
    output_fraction: float | None = None,
    output_fraction_sd: float | None = None,
    prompt_mu: float = 6.5,
    prompt_sigma: float = 1.0,
    output_mu: float = 5.0,
    output_sigma: float = 0.9,
    prompt_max: int | None = None,
    output_max: int | None = None,
) -> SyntheticWorkload:
    """A named synthetic workload; see PRESETS for the names.

    - `azure-conv-like`, `azure-code-like`: fitted Azure 2023 lengths,
      default rates 5.5 and 2.6 req/s (those of the 2023 one-hour traces).
    - `lmsys-like`: totals from the LMSYS-Chat-1M CDF, default 5 req/s.
    - `agent-heavy`: a synthetic agent/RAG mix with long prompts (totals from
      the agent-heavy CDF, output share 2% ± 1.5%), default 2 req/s; labelled
      "code" (SWE-bench context and tool schemas dominate the bytes).
    - `azure-2024-week`: seven days mixing code (16.8M rows) and conv
      (27.3M rows) at their mean rates, 27.8 + 45.1 = 72.9 req/s, with a
      daily sine of ±40% peaking at 14:00 (an assumption: the published
      traces show a diurnal cycle; tune `diurnal_amplitude`). Lengths are
      the 2023 fits (the 2024 length statistics are not in our data).
    - `lognormal`: one lognormal each for prompt and output
      (`prompt_mu`, `prompt_sigma`, `output_mu`, `output_sigma`, in log tokens).

    Categories: code traffic is "code"; conversation traffic is labelled
    "prose" (an assumption: mostly English chat).
    """
    _int_opt("num_requests", num_requests)
    amp = 0.0 if diurnal_amplitude is None else diurnal_amplitude
    if name == "azure-conv-like":
        classes: list[TrafficClass] = [TrafficClass(azure_conv_lengths(), 1.0, "prose")]
        default_rate = 5.5
    elif name == "azure-code-like":
        classes = [TrafficClass(azure_code_lengths(), 1.0, "code")]
        default_rate = 2.6
    elif name == "lmsys-like":
        lm = lmsys_lengths(
            0.5 if output_fraction is None else output_fraction,
            0.25 if output_fraction_sd is None else output_fraction_sd,
        )
        classes = [TrafficClass(lm, 1.0, None)]
        default_rate = 5.0
    elif name == "agent-heavy":
        ah = agent_heavy_lengths(
            0.02 if output_fraction is None else output_fraction,
            0.015 if output_fraction_sd is None else output_fraction_sd,
        )
        classes = [TrafficClass(ah, 1.0, "code")]
        default_rate = 2.0
    elif name == "azure-2024-week":
        classes = [
            TrafficClass(azure_code_lengths(), AZURE_2024_WEEK_CODE_ROWS, "code"),
            TrafficClass(azure_conv_lengths(), AZURE_2024_WEEK_CONV_ROWS, "prose"),
        ]
        default_rate = (AZURE_2024_WEEK_CODE_ROWS + AZURE_2024_WEEK_CONV_ROWS) / _WEEK_S
        amp = 0.4 if diurnal_amplitude is None else diurnal_amplitude
        if duration_s is None and num_requests is None:
            duration_s = _WEEK_S
    elif name == "lognormal":
        classes = [
            TrafficClass(
                Independent(
                    LogNormalMixture.single(prompt_mu, prompt_sigma, hi=prompt_max),
                    LogNormalMixture.single(output_mu, output_sigma, hi=output_max),
                )
            )
        ]
        default_rate = 1.0
    else:
        raise WorkloadError(
            f"unknown synthetic preset {name!r}; expected one of {', '.join(PRESETS)}"
        )
    arrivals = ArrivalProcess(
        rate=default_rate if rate is None else rate, cv=cv, diurnal_amplitude=amp
    )
    return SyntheticWorkload(
        arrivals,
        classes,
        seed=seed,
        duration_s=duration_s,
        num_requests=num_requests,
        name=name,
    )


PRESETS: tuple[str, ...] = (
    "azure-conv-like",
    "azure-code-like",
    "lmsys-like",
    "agent-heavy",
    "azure-2024-week",
    "lognormal",
)
