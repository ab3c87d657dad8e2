"""Measured vLLM runs: load them, replay them through the engine model, compare.

Two input formats:

- the per-request run format of `shared/data/vllm-runs/` (three files per
  run: `NAME_meta.json` with vLLM's version and engine arguments,
  `NAME_requests.jsonl` with one request a line: `input_toks`, `output_toks`,
  `queued_ts`, `first_token_ts`, `last_token_ts`, and optionally
  `NAME_timeseries.csv` with running/waiting requests each second);
- the result JSON of `vllm bench serve --save-result --save-detailed`
  (`input_lens`, `output_lens`, `ttfts`, `itls`, plus the run's
  `request_rate`/`max_concurrency`; per-request `start_times` when present).

`replay` pushes a run's arrivals and token counts through one `Scheduler`
(virtual time) and returns the modelled per-request latencies and the
running/waiting trajectory, so a run can be compared with its model request
for request (`compare`). Besides `catalog.py`, this is the only module of the
engine that reads files (the loaders); `replay` and `compare` are pure.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dualpool.engine.catalog import Catalog
from dualpool.engine.config import EngineConfig, KVCacheDType
from dualpool.engine.memory import (
    GiB,
    MemoryParams,
    MemoryPlan,
    non_torch_for_blocks,
    plan_memory,
    resolved_non_torch_bytes,
)
from dualpool.engine.scheduler import Scheduler
from dualpool.engine.specs import GPUSpec, ModelSpec
from dualpool.engine.step_params import StepTimeParams
from dualpool.engine.timing import StepTimeModel
from dualpool.errors import CatalogError, ConfigError, InfeasibleConfigError

__all__ = [
    "FitResult",
    "LatencyStats",
    "MeasuredRequest",
    "MeasuredRun",
    "ReplayResult",
    "compare",
    "find_runs",
    "fit_step_params",
    "kv_held_blocks",
    "kv_held_capacity",
    "kv_running_sets",
    "latency_stats",
    "load_bench_json",
    "load_run",
    "memory_params_yaml",
    "percentile",
    "replay",
    "resolve_specs",
    "step_params_yaml",
    "trajectory_error",
]


@dataclass(frozen=True, slots=True)
class MeasuredRequest:
    """One request of a measured run; times in seconds from the run's first arrival."""

    arrival: float
    input_tokens: int
    output_tokens: int
    # Measured latencies (NaN when the file has none, e.g. a bench JSON without TTFT).
    ttft: float
    e2e: float

    @property
    def tpot(self) -> float:
        if self.output_tokens <= 1:
            return 0.0
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


@dataclass(frozen=True, slots=True)
class MeasuredRun:
    """A measured run: its requests, engine arguments and (optional) trajectory."""

    name: str
    requests: tuple[MeasuredRequest, ...]
    # vLLM's engine arguments as logged (engine_kwargs of meta.json).
    engine_kwargs: dict[str, Any]
    meta: dict[str, Any]
    # (t, running, waiting) each second, when logged.
    timeseries: tuple[tuple[float, int, int], ...] = ()
    # vLLM's logged num_gpu_blocks (None when not logged).
    num_gpu_blocks: int | None = None

    @property
    def model_name(self) -> str:
        return str(self.meta.get("model") or self.engine_kwargs.get("model") or "")

    @property
    def vllm_version(self) -> str:
        return str(self.meta.get("vllm_version", "unknown"))

    def halves(self) -> tuple[MeasuredRun, MeasuredRun]:
        """The run split at its middle arrival (a holdout demonstration)."""
        mid = len(self.requests) // 2
        first = self.requests[:mid]
        t0 = self.requests[mid].arrival
        second = tuple(
            MeasuredRequest(r.arrival - t0, r.input_tokens, r.output_tokens, r.ttft, r.e2e)
            for r in self.requests[mid:]
        )
        return (
            MeasuredRun(self.name + "[first half]", first, self.engine_kwargs, self.meta, (),
                        self.num_gpu_blocks),
            MeasuredRun(self.name + "[second half]", second, self.engine_kwargs, self.meta, (),
                        self.num_gpu_blocks),
        )  # fmt: skip


# -- loading --------------------------------------------------------------------

_BLOCKS_RE = re.compile(r"num_gpu_blocks\D{0,20}([\d,]+)", re.IGNORECASE)


def _logged_blocks(meta: dict[str, Any], readme: str, stem: str) -> int | None:
    for key in ("num_gpu_blocks", "kv_cache_blocks"):
        v = meta.get(key)
        if v is None:
            v = (
                (meta.get("kv_cache") or {}).get(key)
                if isinstance(meta.get("kv_cache"), dict)
                else None
            )
        if isinstance(v, int) and v > 0:
            return v
    # The runs' README states the figure in prose next to the run's file prefix.
    for para in readme.split("\n\n"):
        if "num_gpu_blocks" in para and _norm(stem.split("_")[0]) in _norm(para):
            m = _BLOCKS_RE.search(para)
            if m:
                return int(m.group(1).replace(",", ""))
    return None


def load_run(path: str | Path) -> MeasuredRun:
    """Load one run from `NAME_meta.json` (or `NAME_requests.jsonl`, or the prefix)."""
    p = Path(path)
    stem = p.name
    for suffix in ("_meta.json", "_requests.jsonl", "_timeseries.csv"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    base = p.parent
    meta_path = base / f"{stem}_meta.json"
    req_path = base / f"{stem}_requests.jsonl"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        lines = req_path.read_text(encoding="utf-8").splitlines()
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError("run", f"cannot read run {stem!r} in {base}: {e}") from e
    rows = [json.loads(line) for line in lines if line.strip()]
    if not rows:
        raise ConfigError("run", f"{req_path}: no requests")
    rows.sort(key=lambda r: r["queued_ts"])
    t0 = rows[0]["queued_ts"]
    reqs = tuple(
        MeasuredRequest(
            arrival=r["queued_ts"] - t0,
            input_tokens=int(r["input_toks"]),
            output_tokens=int(r["output_toks"]),
            ttft=r["first_token_ts"] - r["queued_ts"],
            e2e=r["last_token_ts"] - r["queued_ts"],
        )
        for r in rows
    )
    series: list[tuple[float, int, int]] = []
    ts_path = base / f"{stem}_timeseries.csv"
    if ts_path.exists():
        with ts_path.open(encoding="utf-8") as f:
            for row in csv.DictReader(f):
                series.append(
                    (float(row["t"]), int(float(row["running"])), int(float(row["waiting"])))
                )
    readme = ""
    for name in ("README.md", "README"):
        if (base / name).exists():
            readme = (base / name).read_text(encoding="utf-8")
            break
    kwargs = dict(meta.get("engine_kwargs") or {})
    return MeasuredRun(stem, reqs, kwargs, meta, tuple(series), _logged_blocks(meta, readme, stem))


def find_runs(folder: str | Path) -> list[MeasuredRun]:
    """Every run (a `*_meta.json` with its `*_requests.jsonl`) in a folder, by name."""
    d = Path(folder)
    if not d.is_dir():
        raise ConfigError("--runs", f"{d} is not a directory")
    runs = [
        load_run(p)
        for p in sorted(d.glob("*_meta.json"))
        if (p.parent / p.name.replace("_meta.json", "_requests.jsonl")).exists()
    ]
    if not runs:
        raise ConfigError("--runs", f"no runs (NAME_meta.json + NAME_requests.jsonl) in {d}")
    return runs


def load_bench_json(path: str | Path, request_rate: float | None = None) -> MeasuredRun:
    """A `vllm bench serve --save-result --save-detailed` result as a run.

    Arrivals: the per-request `start_times` when the file has them, else a
    uniform spacing at the run's `request_rate` (infinite rate: all at 0).
    vLLM's bench TTFT is measured from the client's send, so it includes
    the (small) HTTP and tokenization time that the engine's queued_ts
    excludes.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError("run", f"cannot read {p}: {e}") from e
    for key in ("input_lens", "output_lens", "ttfts", "itls"):
        if key not in data:
            raise ConfigError(
                "run", f"{p}: no {key!r}: save the result with --save-result --save-detailed"
            )
    n = len(data["input_lens"])
    starts = data.get("start_times")
    rate = request_rate if request_rate is not None else data.get("request_rate")
    if isinstance(starts, list) and len(starts) == n:
        s0 = min(starts)
        arrivals = [float(s) - s0 for s in starts]
    elif isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0:
        arrivals = [i / rate for i in range(n)]
    else:
        arrivals = [0.0] * n
    reqs: list[MeasuredRequest] = []
    for i in range(n):
        out = int(data["output_lens"][i])
        if out <= 0:
            continue  # a failed request
        ttft = float(data["ttfts"][i])
        e2e = ttft + float(sum(data["itls"][i]))
        reqs.append(MeasuredRequest(arrivals[i], int(data["input_lens"][i]), out, ttft, e2e))
    reqs.sort(key=lambda r: r.arrival)
    meta = {
        "model": data.get("model_id") or data.get("tokenizer_id") or "",
        "vllm_version": data.get("vllm_version", "unknown"),
    }
    kwargs: dict[str, Any] = {"model": meta["model"]}
    if data.get("max_concurrency"):
        kwargs["max_num_seqs"] = int(data["max_concurrency"])
    return MeasuredRun(p.stem, tuple(reqs), kwargs, meta)


# -- model, GPU and engine arguments of a run ---------------------------------------


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def resolve_specs(
    run: MeasuredRun, catalog: Catalog, gpu: str | None = None, model: str | None = None
) -> tuple[ModelSpec, GPUSpec]:
    """The catalog's model and GPU for a run.

    The model: `model` or the run's `meta.model` (a Hugging Face id such as
    meta-llama/Llama-3.1-8B), matched to a catalog name ignoring case and
    punctuation. The GPU: `gpu`, the meta's `gpu`/`gpu_name`/`device` field,
    or a catalog GPU name that prefixes the run's file name (rtx4090_... ->
    rtx-4090). Unknown ones raise CatalogError naming `--catalog FILE`.
    """
    mname = model or run.model_name.split("/")[-1]
    mkey = _norm(mname)
    spec_m = next((m for n, m in catalog.models.items() if _norm(n) == mkey), None)
    if spec_m is None:
        raise CatalogError(
            f"run {run.name}: model {mname!r} is not in the catalog; "
            "add it with --catalog FILE (models: NAME: {hf_config: config.json})"
        )
    gname = gpu or next(
        (str(run.meta[k]) for k in ("gpu", "gpu_name", "device", "hardware") if run.meta.get(k)),
        None,
    )
    spec_g: GPUSpec | None = None
    if gname is not None:
        gkey = _norm(gname.replace("NVIDIA", "").replace("GeForce", ""))
        spec_g = next(
            (g for n, g in catalog.gpus.items() if _norm(n) == gkey or _norm(n) in gkey), None
        )
        if spec_g is None:
            # "NVIDIA A100-SXM4-80GB" -> a100-80gb: the name without its memory suffix
            hits = [n for n in catalog.gpus if re.sub(r"\d+gb$", "", _norm(n)) in gkey]
            if len(hits) == 1:
                spec_g = catalog.gpus[hits[0]]
    else:
        stem = _norm(run.name.split("_")[0])
        # the file prefix names the GPU: rtx4090_ -> rtx-4090, h100_ -> h100-80gb
        best = [n for n in catalog.gpus if stem.startswith(_norm(n))]
        if not best:
            best = [n for n in catalog.gpus if _norm(n).startswith(stem)]
            if len(best) > 1:
                best = []  # ambiguous (e.g. a100 with two memory sizes): ask for the name
        if best:
            spec_g = catalog.gpus[max(best, key=len)]
        gname = run.name.split("_")[0]
    if spec_g is None:
        raise CatalogError(
            f"run {run.name}: GPU {gname!r} is not in the catalog; "
            "add it with --catalog FILE (gpus: NAME: {memory_gib: ..., hbm_bandwidth_gbps: ...})"
        )
    return spec_m, spec_g


def engine_config(run: MeasuredRun, model: ModelSpec) -> EngineConfig:
    """vLLM's engine arguments of the run as an EngineConfig (vLLM's defaults elsewhere)."""
    kw = run.engine_kwargs
    max_len = kw.get("max_model_len") or model.max_position_embeddings
    seqs = int(kw.get("max_num_seqs") or 256)
    # vLLM v1's default for the OpenAI server on a GPU that is not an
    # H100/H200-class part is 2048 batched tokens (8192 on those).
    mnbt = int(kw.get("max_num_batched_tokens") or 2048)
    kv: KVCacheDType = "auto"
    if kw.get("kv_cache_dtype") in ("fp8", "fp8_e4m3", "fp8_e5m2"):
        kv = kw["kv_cache_dtype"]
    return EngineConfig(
        tensor_parallel_size=int(kw.get("tensor_parallel_size") or 1),
        max_model_len=int(max_len),
        max_num_seqs=seqs,
        max_num_batched_tokens=max(mnbt, seqs),
        gpu_memory_utilization=float(kw.get("gpu_memory_utilization") or 0.9),
        block_size=int(kw.get("block_size") or 16),
        enable_chunked_prefill=bool(kw.get("enable_chunked_prefill", True)),
        kv_cache_dtype=kv,
    )


# -- replay -------------------------------------------------------------------------


@dataclass(slots=True)
class ReplayResult:
    """The model's account of a run, request by request (same order as the run)."""

    ttft: list[float]
    e2e: list[float]
    tpot: list[float]
    num_gpu_blocks: int
    num_preemptions: int
    # (t, running, waiting) at each whole second of the replay.
    timeseries: list[tuple[float, int, int]] = field(default_factory=list)
    plan: MemoryPlan | None = None


def replay(
    run: MeasuredRun,
    model: ModelSpec,
    gpu: GPUSpec,
    config: EngineConfig,
    step_params: StepTimeParams | None = None,
    memory_params: MemoryParams | None = None,
    num_gpu_blocks: int | None = None,
    timing: StepTimeModel | None = None,
) -> ReplayResult:
    """Push a run's arrivals through one Scheduler (virtual time).

    `num_gpu_blocks` overrides the memory plan's KV capacity (e.g. vLLM's
    logged figure, to separate timing errors from memory errors).
    """
    plan = plan_memory(model, gpu, config, memory_params, check=num_gpu_blocks is None)
    blocks = plan.num_gpu_blocks if num_gpu_blocks is None else num_gpu_blocks
    timing = timing or StepTimeModel(model, gpu, config, step_params)
    sched = Scheduler(config, blocks, timing, plan)
    sched.list_decode_members = False
    reqs = run.requests
    n = len(reqs)
    handles = []
    now = 0.0
    i = 0
    series: list[tuple[float, int, int]] = []
    next_tick = 1.0
    while i < n or sched.has_unfinished_requests:
        if not sched.has_unfinished_requests and reqs[i].arrival > now:
            now = reqs[i].arrival
        while i < n and reqs[i].arrival <= now:
            r = reqs[i]
            handles.append(sched.add_request(str(i), r.input_tokens, r.output_tokens, r.arrival))
            i += 1
        while now >= next_tick:
            series.append((next_tick, sched.num_running, sched.num_waiting))
            next_tick += 1.0
        nxt = reqs[i].arrival if i < n else None
        until = min(nxt, next_tick) if nxt is not None else next_tick
        ff = sched.fast_forward(now, until_time=until)
        if ff.steps:
            now = ff.now
            continue
        _, res = sched.step(now)
        now = res.now
    ttft: list[float] = []
    e2e: list[float] = []
    tpot: list[float] = []
    for h in handles:
        if h.error is not None or h.first_token_time is None or h.finish_time is None:
            raise ConfigError(
                "run", f"request of {h.prompt_tokens} + {h.max_tokens} tokens refused: {h.error}"
            )
        ttft.append(h.first_token_time - h.arrival_time)
        e2e.append(h.finish_time - h.arrival_time)
        out = h.output_tokens
        tpot.append((h.finish_time - h.first_token_time) / (out - 1) if out > 1 else 0.0)
    return ReplayResult(ttft, e2e, tpot, blocks, sched.num_preemptions_total, series, plan)


# -- comparison ------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    xs = sorted(v for v in values if not math.isnan(v))
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """P50/P90 of TTFT, E2E and TPOT (seconds)."""

    ttft_p50: float
    ttft_p90: float
    e2e_p50: float
    e2e_p90: float
    tpot_p50: float
    tpot_p90: float

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__slots__}


def latency_stats(
    ttft: Sequence[float], e2e: Sequence[float], tpot: Sequence[float]
) -> LatencyStats:
    return LatencyStats(
        percentile(ttft, 50), percentile(ttft, 90),
        percentile(e2e, 50), percentile(e2e, 90),
        percentile(tpot, 50), percentile(tpot, 90),
    )  # fmt: skip


def measured_stats(run: MeasuredRun, select: range | None = None) -> LatencyStats:
    rs = run.requests if select is None else run.requests[select.start : select.stop]
    return latency_stats([r.ttft for r in rs], [r.e2e for r in rs], [r.tpot for r in rs])


def compare(
    run: MeasuredRun, result: ReplayResult, select: range | None = None
) -> dict[str, float]:
    """Relative error (model / measured - 1) of each percentile.

    `select`: only these requests (by arrival order) of the same replay,
    e.g. the second half of a run as a holdout of a fit on the first half.
    """
    meas = measured_stats(run, select).as_dict()
    if select is None:
        mod = latency_stats(result.ttft, result.e2e, result.tpot).as_dict()
    else:
        a, b = select.start, select.stop
        mod = latency_stats(result.ttft[a:b], result.e2e[a:b], result.tpot[a:b]).as_dict()
    return {k: (mod[k] / meas[k] - 1.0) if meas[k] else math.nan for k in meas}


def trajectory_error(run: MeasuredRun, res: ReplayResult) -> dict[str, float]:
    """The replay's running/waiting trajectory against the run's timeseries.

    `running_mae`/`waiting_mae`: mean |model - measured| over the seconds
    both have; `running_bias`: mean (model - measured) running requests
    (negative: the model holds fewer requests at once than vLLM did, the
    mark of a KV capacity below vLLM's effective one). Empty without a
    timeseries.
    """
    if not run.timeseries or not res.timeseries:
        return {}
    model = {round(t): (r, w) for t, r, w in res.timeseries}
    dr: list[float] = []
    dw: list[float] = []
    for t, r, w in run.timeseries:
        m = model.get(round(t))
        if m is None:
            continue
        dr.append(m[0] - r)
        dw.append(m[1] - w)
    if not dr:
        return {}
    return {
        "running_mae": sum(abs(d) for d in dr) / len(dr),
        "waiting_mae": sum(abs(d) for d in dw) / len(dw),
        "running_bias": sum(dr) / len(dr),
    }


# -- the KV capacity a run's stamps show -------------------------------------------------


def kv_running_sets(run: MeasuredRun) -> list[tuple[float, int, tuple[int, ...]]]:
    """The requests vLLM kept running each second while the KV limit bound.

    (t, running, indices) for each second of the run's timeseries from the
    first one at which vLLM's running count falls while requests wait (the
    KV limit binding: vLLM admits no one and preempts) to the first
    completion. vLLM v1 preempts the most recently admitted running request
    and admits in arrival order, so the running set at t is the oldest
    `running` requests alive (first token at or before t, last after);
    `indices` are their positions in `run.requests` (arrival order). Empty
    without a timeseries or a KV-bound phase.
    """
    rows = run.timeseries
    if not rows or not run.requests:
        return []
    start = next(
        (t for (t, r, w), (_, r0, _) in zip(rows[1:], rows, strict=False) if r < r0 and w > 0),
        None,
    )
    if start is None:
        return []
    first_done = min(r.arrival + r.e2e for r in run.requests)
    out: list[tuple[float, int, tuple[int, ...]]] = []
    for t, running, _ in rows:
        if not start <= t < first_done:
            continue
        alive = [
            i for i, r in enumerate(run.requests) if r.arrival + r.ttft <= t < r.arrival + r.e2e
        ]
        out.append((t, running, tuple(alive[:running])))
    return out


def kv_held_blocks(run: MeasuredRun, block_size: int) -> list[tuple[float, int, int]]:
    """Blocks the running requests held each second while the KV limit bound.

    (t, running, blocks) for each second of `kv_running_sets`: each request
    of the running set holds ceil((prompt + generated) / block_size) blocks,
    generated = 1 + (t - first token) / its own TPOT. Blocks two running
    requests share through the prefix cache would count twice here; the
    RTX 4090 run has none (docs/engine-model.md §7, measured from its token
    ids; benchmarks/kv_evidence.py --shared-prefix subtracts given ones).
    """
    out: list[tuple[float, int, int]] = []
    for t, running, members in kv_running_sets(run):
        blocks = 0
        for i in members:
            r = run.requests[i]
            tpot = r.tpot
            gen = r.output_tokens if tpot <= 0 else 1 + (t - r.arrival - r.ttft) / tpot
            blocks += math.ceil((r.input_tokens + min(r.output_tokens, gen)) / block_size)
        out.append((t, running, blocks))
    return out


def kv_held_capacity(run: MeasuredRun, block_size: int) -> int | None:
    """The median of `kv_held_blocks` (None without a KV-bound phase in the timeseries)."""
    held = sorted(b for _, _, b in kv_held_blocks(run, block_size))
    if not held:
        return None
    mid = len(held) // 2
    return held[mid] if len(held) % 2 else (held[mid - 1] + held[mid]) // 2


# -- fitting step-time parameters (and the machine's KV capacity) to a run ------------


@dataclass(frozen=True, slots=True)
class FitResult:
    """Parameters fitted to a run, and the run's errors with them."""

    params: StepTimeParams
    # model / measured - 1 per percentile, before (the starting params) and after.
    before: dict[str, float]
    after: dict[str, float]
    replays: int
    # The machine's non-torch memory (bytes) fitted to a KV-bound run; None
    # when the capacity was not fitted (not KV-bound, or num_gpu_blocks given).
    non_torch_bytes: int | None = None
    # KV blocks of the start and of the fitted replay.
    start_blocks: int = 0
    fitted_blocks: int = 0
    # The capacity the run's stamps show (kv_held_capacity), when they show one.
    held_blocks: int | None = None
    # The start replay preempts or the timeseries shows the KV limit binding.
    kv_bound: bool = False

    @property
    def max_abs_error(self) -> float:
        return max(abs(v) for v in self.after.values())

    @property
    def memory_params(self) -> MemoryParams | None:
        """MemoryParams carrying the fitted non-torch memory (None when not fitted)."""
        if self.non_torch_bytes is None:
            return None
        return MemoryParams(non_torch_bytes=self.non_torch_bytes)


_STEP_FIELDS = (
    "flops_efficiency", "bandwidth_efficiency", "step_overhead_s", "per_seq_overhead_s"
)  # fmt: skip
# The machine's non-torch memory, searched in GiB (vLLM's log unit) and kept
# to 4 decimals (0.1 MiB, well under a KV block), the precision the written
# fragment carries, so the fragment reproduces the fitted capacity exactly.
_KV_FIELD = "non_torch_gib"
_FIT_BOUNDS = {
    "flops_efficiency": (0.05, 1.0),
    "bandwidth_efficiency": (0.05, 1.0),
    "step_overhead_s": (0.0, 0.05),
    "per_seq_overhead_s": (0.0, 1e-3),
    _KV_FIELD: (0.0, 8.0),
}
_FIT_ROUND = {_KV_FIELD: 4}


def _loss(err: dict[str, float]) -> tuple[float, float]:
    """(worst |log ratio|, mean squared log ratio) of the six percentiles.

    Compared as a pair: the worst percentile first (it is the figure the fit
    reports and the targets judge), the mean square only between points
    whose worst is equal. A sum of the two (the first version) let the
    search trade a worse worst percentile for a better mean: on the RTX 4090
    run it bought TTFT with TPOT 27% fast.
    """
    logs = [math.log1p(v) for v in err.values() if not math.isnan(v) and v > -1.0]
    if not logs or len(logs) < len(err):
        return (math.inf, math.inf)
    return (max(abs(x) for x in logs), sum(x * x for x in logs) / len(logs))


def fit_step_params(
    run: MeasuredRun,
    model: ModelSpec,
    gpu: GPUSpec,
    config: EngineConfig,
    start: StepTimeParams | None = None,
    num_gpu_blocks: int | None = None,
    max_replays: int = 160,
    select: range | None = None,
    fit_kv: bool | None = None,
) -> FitResult:
    """Fit flops/bandwidth efficiency, the two overheads and (KV-bound) the capacity.

    Pattern search (coordinate steps, first improvement; all steps halve
    when no coordinate improves) on the P50/P90 of TTFT, E2E and TPOT, each
    replay a full `replay` of the run: the fit sees queueing, chunked
    prefill, preemptions and recompute the way the model plays them, not a
    per-step formula. The objective is the worst percentile (`_loss`), and
    the search starts at `start` (default: the built-in defaults) and only
    ever moves to a strictly better point, so the fitted parameters are
    never worse than the start on the requests fitted. ~100 replays of a
    300-request run take ~10 s. `select` fits on those requests only (the
    whole run is still replayed, so their queueing is right).

    The KV capacity is a fifth coordinate when the run is KV-bound (`fit_kv`
    None: the start's replay preempts, or the run's timeseries shows the
    KV limit binding; never with `num_gpu_blocks`). It is searched as the
    machine's non-torch memory (`MemoryParams.non_torch_bytes`, the term
    vLLM measures per machine at start-up), so the fitted value carries
    over to other engine arguments on the same machine. The capacity the
    run's stamps show (`kv_held_capacity`) is tried right after the start,
    kept only if strictly better.
    """
    base = start or StepTimeParams()
    timing0 = StepTimeModel(model, gpu, config, base)
    nt0 = resolved_non_torch_bytes(gpu)
    x = {
        "flops_efficiency": timing0.flops_efficiency,
        "bandwidth_efficiency": timing0.bandwidth_efficiency,
        "step_overhead_s": base.step_overhead_s,
        "per_seq_overhead_s": base.per_seq_overhead_s,
    }
    steps = {
        "flops_efficiency": 0.1,
        "bandwidth_efficiency": 0.1,
        "step_overhead_s": 0.002,
        "per_seq_overhead_s": 2e-5,
    }
    count = 0

    def memory_of(v: dict[str, float]) -> MemoryParams | None:
        if _KV_FIELD not in v:
            return None
        return MemoryParams(non_torch_bytes=round(v[_KV_FIELD] * GiB))

    def evaluate(v: dict[str, float]) -> tuple[tuple[float, float], dict[str, float], int, int]:
        """(loss, errors, KV blocks, preemptions) of one replay at `v`."""
        nonlocal count
        count += 1
        p = replace_params(base, {k: v[k] for k in _STEP_FIELDS})
        try:
            res = replay(run, model, gpu, config, p, memory_of(v), num_gpu_blocks=num_gpu_blocks)
        except InfeasibleConfigError:  # a capacity below one max_model_len sequence
            return (math.inf, math.inf), {}, 0, 0
        err = compare(run, res, select)
        return _loss(err), err, res.num_gpu_blocks, res.num_preemptions

    best, before, start_blocks, preemptions = evaluate(x)
    best_err = before
    fitted_blocks = start_blocks
    held = kv_held_capacity(run, config.block_size)
    kv_bound = preemptions > 0 or held is not None
    fit_kv = (kv_bound if fit_kv is None else fit_kv) and num_gpu_blocks is None
    if fit_kv:
        x[_KV_FIELD] = round(nt0 / GiB, 4)
        steps[_KV_FIELD] = 0.1
        if held is not None and count < max_replays:
            nt = non_torch_for_blocks(model, gpu, config, held) / GiB
            cand = dict(x)
            cand[_KV_FIELD] = round(min(max(nt, 0.0), _FIT_BOUNDS[_KV_FIELD][1]), 4)
            if cand[_KV_FIELD] != x[_KV_FIELD]:
                loss, err, blocks, _ = evaluate(cand)
                if loss < best:
                    best, best_err, x, fitted_blocks = loss, err, cand, blocks
    fields = (*_STEP_FIELDS, _KV_FIELD) if fit_kv else _STEP_FIELDS
    while count < max_replays:
        improved = False
        for name in fields:
            lo, hi = _FIT_BOUNDS[name]
            for sign in (1.0, -1.0):
                cand = dict(x)
                v = min(hi, max(lo, x[name] + sign * steps[name]))
                if name in _FIT_ROUND:
                    v = round(v, _FIT_ROUND[name])
                cand[name] = v
                if cand[name] == x[name] or (name.endswith("efficiency") and cand[name] <= 0):
                    continue
                loss, err, blocks, _ = evaluate(cand)
                if loss < best:
                    best, best_err, x, fitted_blocks = loss, err, cand, blocks
                    improved = True
                    break
                if count >= max_replays:
                    break
            if count >= max_replays:
                break
        if not improved:
            for name in steps:
                steps[name] /= 2.0
            if steps["flops_efficiency"] < 0.002:
                break
    mp = memory_of(x)
    return FitResult(
        replace_params(base, {k: x[k] for k in _STEP_FIELDS}),
        before,
        best_err,
        count,
        non_torch_bytes=None if mp is None else mp.non_torch_bytes,
        start_blocks=start_blocks,
        fitted_blocks=fitted_blocks,
        held_blocks=held,
        kv_bound=kv_bound,
    )


def replace_params(base: StepTimeParams, values: dict[str, float]) -> StepTimeParams:
    from dataclasses import replace as _replace

    return _replace(base, **{k: round(v, 6) for k, v in values.items()})


def step_params_yaml(params: StepTimeParams, comment: str = "") -> str:
    """The `step_params:` YAML fragment simulate, plan and emulate read."""
    lines = [f"# {line}" for line in comment.splitlines()] if comment else []
    lines.append("step_params:")
    for name in (
        "flops_efficiency",
        "bandwidth_efficiency",
        "interconnect_efficiency",
        "step_overhead_s",
        "per_seq_overhead_s",
        "allreduce_latency_s",
        "nccl_latency_s",
    ):
        v = getattr(params, name)
        if v is not None:
            lines.append(f"  {name}: {v:.6g}")
    return "\n".join(lines) + "\n"


def memory_params_yaml(non_torch_bytes: int, comment: str = "") -> str:
    """The `memory_params:` YAML fragment (the machine's non-torch memory, GiB).

    Four decimals of GiB (0.1 MiB), the precision `fit_step_params` searches
    at, so the fragment reproduces the fitted capacity block for block.
    """
    lines = [f"# {line}" for line in comment.splitlines()] if comment else []
    lines.append("memory_params:")
    lines.append(f"  non_torch_gib: {round(non_torch_bytes / GiB, 4):.4f}")
    return "\n".join(lines) + "\n"
