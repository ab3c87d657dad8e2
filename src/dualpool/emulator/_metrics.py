"""`/metrics` of one emulated instance: vLLM v1's Prometheus names and labels.

Each instance has its own `CollectorRegistry`. Gauges and token counters are
read from the engine model when scraped (no per-step cost); histograms and
the per-reason success counter are observed as requests finish. Names,
labels (`model_name`, `engine="0"`) and bucket boundaries are those of
vllm/v1/metrics/loggers.py (PrometheusStatLogger).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dualpool.engine import Scheduler

__all__ = ["REQUEST_LATENCY_BUCKETS", "TTFT_BUCKETS", "InstanceMetrics"]

# vLLM's vllm:time_to_first_token_seconds buckets.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
# vLLM's request_latency_buckets (e2e, queue, inference, prefill, decode).
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
# vLLM's time-per-output-token buckets.
TPOT_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
# vLLM's FinishReason values (the finished_reason label).
FINISH_REASONS = ("stop", "length", "abort")


class _EngineCollector(Collector):
    """Scheduler state as vLLM's gauges and counters, read at scrape time."""

    def __init__(
        self,
        sched: Scheduler,
        model_name: str,
        gpu_memory_utilization: float,
        lag: Callable[[], float],
    ) -> None:
        self._s = sched
        self._lag = lag
        self._labels = [model_name, "0"]
        self._gmu = gpu_memory_utilization

    def collect(self) -> Iterator[Metric]:
        s, lv, ln = self._s, self._labels, ["model_name", "engine"]
        g = GaugeMetricFamily(
            "vllm:num_requests_running", "Number of requests in model execution batches.",
            labels=ln,
        )  # fmt: skip
        g.add_metric(lv, s.num_running)
        yield g
        g = GaugeMetricFamily(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", labels=ln
        )
        g.add_metric(lv, s.num_waiting)
        yield g
        g = GaugeMetricFamily(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels=ln
        )
        g.add_metric(lv, s.kv_usage)
        yield g
        for name, doc, value in (
            ("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
             s.num_preemptions_total),
            ("vllm:prompt_tokens", "Number of prefill tokens processed.", s.prompt_tokens_total),
            ("vllm:generation_tokens", "Number of generation tokens processed.",
             s.generation_tokens_total),
        ):  # fmt: skip
            c = CounterMetricFamily(name, doc, labels=ln)
            c.add_metric(lv, value)
            yield c
        cfg = s.config
        info = {
            "block_size": str(cfg.block_size),
            "cache_dtype": cfg.kv_cache_dtype,
            "enable_prefix_caching": "False",
            "gpu_memory_utilization": str(self._gmu),
            "num_cpu_blocks": "None",
            "num_gpu_blocks": str(s.kv.num_gpu_blocks),
            "engine": "0",
        }
        g = GaugeMetricFamily(
            "vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
            labels=list(info),
        )  # fmt: skip
        g.add_metric(list(info.values()), 1.0)
        yield g
        # Not vLLM's: wall seconds the engine loop fell behind its schedule and
        # gave up (the emulator process was overloaded; timing is distorted).
        c = CounterMetricFamily(
            "dualpool_emulator_lag_seconds",
            "Wall seconds the emulated engine fell behind the modelled timing (overload).",
            labels=ln,
        )
        c.add_metric(lv, self._lag())
        yield c


class InstanceMetrics:
    """The registry of one instance and the observations its engine loop makes."""

    def __init__(
        self,
        sched: Scheduler,
        model_name: str,
        gpu_memory_utilization: float,
        lag: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EngineCollector(sched, model_name, gpu_memory_utilization, lag))
        ln = ["model_name", "engine"]
        lv = (model_name, "0")
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            ln, registry=self.registry, buckets=TTFT_BUCKETS,
        ).labels(*lv)  # fmt: skip
        # Per request (its mean), as vLLM's newer request-level histogram.
        self.tpot = Histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            ln, registry=self.registry, buckets=TPOT_BUCKETS,
        ).labels(*lv)  # fmt: skip
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            ln, registry=self.registry, buckets=REQUEST_LATENCY_BUCKETS,
        ).labels(*lv)  # fmt: skip
        success = Counter(
            "vllm:request_success", "Count of successfully processed requests.",
            [*ln, "finished_reason"], registry=self.registry,
        )  # fmt: skip
        self.success = {r: success.labels(*lv, r) for r in FINISH_REASONS}

    def render(self) -> bytes:
        return generate_latest(self.registry)
