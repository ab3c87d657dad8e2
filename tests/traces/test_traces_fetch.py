"""`dualpool traces fetch` against a local HTTP server serving ../shared/data (no internet)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dualpool.cli.main import main
from dualpool.traces import TRACES

# upstream file name -> the copy in ../shared/data
SHARED = {
    "AzureLLMInferenceTrace_code.csv": "traces/azure_2023_code.csv",
    "AzureLLMInferenceTrace_conv.csv": "traces/azure_2023_conv.csv",
}


class _Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cut_after: int | None = None  # drop the connection after this many bytes
        self.ranges: list[str | None] = []
        self.honour_range = True
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                if name not in SHARED:
                    self.send_error(404)
                    return
                data = (srv.root / SHARED[name]).read_bytes()
                rng = self.headers.get("Range")
                srv.ranges.append(rng)
                start = 0
                if rng and srv.honour_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if srv.cut_after is not None:
                    self.wfile.write(body[: srv.cut_after])
                    self.wfile.flush()
                    srv.cut_after = None
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(shared_data: Path) -> Iterator[_Server]:
    s = _Server(shared_data)
    yield s
    s.httpd.shutdown()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_checks_and_records_the_checksum(
    server: _Server, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    want = _sha(shared_data / SHARED["AzureLLMInferenceTrace_code.csv"])
    args = ["traces", "fetch", "azure-2023-code", "--dir", str(tmp_path), "--base-url", server.url]
    assert main([*args, "--sha256", want]) == 0
    out = tmp_path / "AzureLLMInferenceTrace_code.csv"
    assert _sha(out) == want and want in capsys.readouterr().out
    assert (tmp_path / "AzureLLMInferenceTrace_code.csv.sha256").read_text().startswith(want)
    assert main(args) == 0  # again: already there, checked against the recorded sum
    assert "already present" in capsys.readouterr().out


def test_interrupted_download_resumes_with_range(
    server: _Server, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["traces", "fetch", "azure-2023-conv", "--dir", str(tmp_path), "--base-url", server.url]
    server.cut_after = 100_000
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resume" in err[0]
    part = tmp_path / "AzureLLMInferenceTrace_conv.csv.part"
    assert part.stat().st_size == 100_000
    assert main(args) == 0
    assert server.ranges[-1] == "bytes=100000-"
    assert "resumed at 100,000 bytes" in capsys.readouterr().out
    full = shared_data / SHARED["AzureLLMInferenceTrace_conv.csv"]
    assert _sha(tmp_path / "AzureLLMInferenceTrace_conv.csv") == _sha(full)


def test_server_without_ranges_starts_over(
    server: _Server, shared_data: Path, tmp_path: Path
) -> None:
    (tmp_path / "AzureLLMInferenceTrace_code.csv.part").write_bytes(b"garbage" * 10)
    server.honour_range = False
    args = ["traces", "fetch", "azure-2023-code", "--dir", str(tmp_path), "--base-url", server.url]
    assert main(args) == 0
    full = shared_data / SHARED["AzureLLMInferenceTrace_code.csv"]
    assert _sha(tmp_path / "AzureLLMInferenceTrace_code.csv") == _sha(full)


def test_bad_checksum_offline_and_unknown_are_one_line(
    server: _Server,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = ["traces", "fetch", "azure-2023-code", "--dir", str(tmp_path)]
    cases = [
        ([*base, "--base-url", server.url, "--sha256", "0" * 64], "SHA-256"),
        ([*base, "--base-url", "http://127.0.0.1:9/x", "--timeout", "2"], "cannot reach"),
        (["traces", "fetch", "nope", "--dir", str(tmp_path)], "unknown trace"),
    ]
    for args, needle in cases:
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    monkeypatch.setenv("DUALPOOL_TRACES_URL", server.url)  # the env override
    assert main(["traces", "fetch", "azure-2023-code", "--dir", str(tmp_path / "env")]) == 0


def test_list_names_every_trace(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["traces", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name[:10] in out for name in TRACES)
