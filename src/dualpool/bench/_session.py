"""One benchmark from its settings: workload, bodies, model discovery, the run, summaries."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dualpool.bench._client import Endpoint, get
from dualpool.bench._metrics import Summary, summarize
from dualpool.bench._prompts import BodyMaker, BodyOptions, PromptSynth
from dualpool.bench._run import ArmProgress, RunOptions, RunResult, models_of, run_bench
from dualpool.errors import ConfigError
from dualpool.samples import TEXT_KINDS
from dualpool.tokenizers import load_tokenizer
from dualpool.workload import Workload, limit, open_workload

__all__ = ["BenchConfig", "BenchOutcome", "bench", "discover_model", "load_workload"]


@dataclass(frozen=True)
class BenchConfig:
    """Everything one `dualpool bench` run needs."""

    # (arm name, base URL); one entry for a plain benchmark, two for an A/B
    targets: Sequence[tuple[str, str]]
    # a workload spec `open_workload` reads (trace, CDF, preset, JSONL)
    workload: str
    num_requests: int = 1000
    # retime arrivals to this mean rate (Poisson for presets), req/s; None: as the source
    rate: float | None = None
    options: RunOptions = field(default_factory=RunOptions)
    # model name to send; None: the first of the endpoint's /v1/models
    model: str | None = None
    chat: bool = True
    output_hint: bool = True
    mix: Mapping[str, float] | None = None
    tokenizer: str = "llama3"
    seed: int = 0
    goodput: Mapping[str, float] = field(default_factory=dict)
    percentiles: Sequence[float] = (50.0, 90.0, 99.0)
    headers: Sequence[tuple[str, str]] = ()
    extra_body: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.num_requests < 1:
            raise ConfigError("--num-requests", f"must be >= 1, got {self.num_requests}")
        if self.rate is not None and not self.rate > 0:
            raise ConfigError("--rate", f"must be > 0, got {self.rate}")
        for p in self.percentiles:
            if not 0 <= p <= 100:
                raise ConfigError("--percentiles", f"must be in [0, 100], got {p}")


@dataclass(slots=True)
class BenchOutcome:
    run: RunResult
    summaries: dict[str, Summary]
    model: str


def load_workload(spec: str, num_requests: int, rate: float | None) -> Workload:
    """The workload at `rate` when given (the source's own `rate` option: synthetic
    arrivals for presets, CDFs, length CSVs and JSONL bodies, a retimed trace for
    Azure CSVs), capped at `num_requests`."""
    w = open_workload(spec) if rate is None else open_workload(spec, rate=rate)
    return limit(w, num_requests)


async def discover_model(endpoint: Endpoint, headers: Sequence[tuple[str, str]] = ()) -> str:
    """The first model of `GET /v1/models`, as `vllm bench serve` does without --model."""
    try:
        status, body = await get(endpoint, "/v1/models", headers=list(headers))
    except OSError as exc:
        raise ConfigError("url", f"cannot reach {endpoint.url}: {exc}") from None
    ids = models_of(body) if status == 200 else []
    if not ids:
        raise ConfigError(
            "--model", f"{endpoint.url}/v1/models answered {status} without a model; pass --model"
        )
    return ids[0]


async def bench(
    cfg: BenchConfig,
    *,
    progress: Callable[[list[ArmProgress], float], None] | None = None,
    on_start: Callable[[Callable[[str], None]], None] | None = None,
) -> BenchOutcome:
    """Run one benchmark (all arms at once) and summarize each arm."""
    endpoints = [(name, Endpoint.parse(url, "url")) for name, url in cfg.targets]
    if not endpoints:
        raise ConfigError("url", "no endpoint to benchmark")
    workload = load_workload(cfg.workload, cfg.num_requests, cfg.rate)
    model = cfg.model or await discover_model(endpoints[0][1], cfg.headers)
    synth = PromptSynth(load_tokenizer(cfg.tokenizer), mix=cfg.mix, seed=cfg.seed)
    maker = BodyMaker(
        synth,
        BodyOptions(
            model=model,
            chat=cfg.chat,
            stream=cfg.options.stream,
            output_hint=cfg.output_hint,
            extra_body=cfg.extra_body,
            extra_headers=tuple(cfg.headers),
        ),
    )
    # Build the text of every category a request may need before the clock starts.
    await asyncio.get_running_loop().run_in_executor(None, _warm, synth)
    result = await run_bench(
        endpoints, workload, maker, cfg.options, progress=progress, on_start=on_start
    )
    summaries = {
        name: summarize(
            rs,
            result.durations[name],
            percentiles=cfg.percentiles,
            goodput=cfg.goodput or None,
        )
        for name, rs in result.results.items()
    }
    return BenchOutcome(result, summaries, model)


def _warm(synth: PromptSynth) -> None:
    for kind in TEXT_KINDS:
        synth.base(kind)
