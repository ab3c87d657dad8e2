"""deploy/grafana/dualpool.json: every PromQL query names metrics that a live gateway
or a live vLLM emulator really exports (both scraped here), and the panels cover
what an operator watches."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dualpool.json"

_FUNCS = {
    "sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile",
    "clamp_min", "clamp_max", "abs", "by", "without", "on", "ignoring", "group_left",
    "group_right", "and", "or", "unless", "offset", "bool", "label_replace", "vector",
    "scalar", "time", "avg_over_time", "max_over_time", "min_over_time", "sum_over_time",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    e = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    tokens = re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", e)
    return {t for t in tokens if t not in _FUNCS}


def queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def exported(text: str) -> set[str]:
    """Sample names a scrape can return, from the exposition's TYPE lines and samples."""
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            base = name.removesuffix("_total")
            names.update(base + s for s in suffixes.get(kind, ()))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def scrape(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        return str(r.read().decode())


@pytest.fixture(scope="module")
def live_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    import sys

    sys.path.insert(0, str(REPO / "tests" / "gateway"))
    from redis_helpers import RedisServer, need_redis

    from dualpool.emulator.testing import EmulatorProcess
    from dualpool.gateway.testing import GatewayThread

    redis = RedisServer(need_redis(), tmp_path_factory.mktemp("redis")).start()
    emu = EmulatorProcess(
        [
            "--model",
            "llama-3.1-8b",
            "--gpu",
            "h100-80gb",
            "--max-model-len",
            "8192",
            "--instances",
            "2",
            "--tokenizer",
            "bytes",
            "--speedup",
            "50",
            "--served-model-name",
            "m",
        ]
    ).start()
    gw = None
    try:
        gw = GatewayThread(
            {
                "model": "m",
                "pools": [
                    {"name": "short", "endpoints": [emu.urls[0]], "max_model_len": 8192},
                    {"name": "long", "endpoints": [emu.urls[1]], "max_model_len": 8192},
                ],
                "health": {"interval": 0.2, "metrics_interval": 0.2},
                "log": {"level": "error", "access": "debug"},
                "calibrator": {"shared": {"url": redis.url, "interval": 0.2}},
            }
        )
        import openai

        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
        for i in range(3):
            client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "hello there " * (20 + i)}],
                max_tokens=4,
            )
        yield exported(scrape(gw.url)) | exported(scrape(emu.urls[0]))
    finally:
        if gw is not None:
            gw.stop()
        emu.terminate()
        redis.stop()


def test_every_query_names_an_exported_metric(live_metrics: set[str]) -> None:
    missing = [
        (title, name)
        for title, expr in queries()
        for name in sorted(metric_names(expr))
        if name not in live_metrics
    ]
    assert not missing, f"metrics no live exporter has: {missing}"


def test_the_dashboard_covers_what_operators_watch() -> None:
    used = {n for _, expr in queries() for n in metric_names(expr)}
    for name in (
        "dualpool_requests_total",  # routing split
        "dualpool_spillovers_total",
        "dualpool_misroutes_total",
        "dualpool_rejections_total",
        "dualpool_learned_bytes_per_token",
        "dualpool_learned_bytes_per_token_sigma",
        "dualpool_estimate_relative_error_bucket",
        "dualpool_upstream_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",  # added latency = gateway - vLLM
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:kv_cache_usage_perc",
        "dualpool_degraded",
    ):
        assert name in used, name


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (le, pool) (rate(a_b_bucket{x="y"}[5m]))) '
        "- max by (c) (vllm:kv_cache_usage_perc)"
    )
    assert metric_names(expr) == {"a_b_bucket", "vllm:kv_cache_usage_perc"}
