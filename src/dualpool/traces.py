"""Public traces the workload module reads, and a resumable, checked download of each.

    dualpool traces list
    dualpool traces fetch azure-2023-conv [--dir traces/]

A download goes to `DIR/FILE.part`; an interrupted one resumes from where it
stopped (HTTP `Range`), and a server that ignores the range makes it start
over. When complete, its SHA-256 is checked against `--sha256` when given,
else against `DIR/FILE.sha256` from an earlier fetch, and written there; then
`.part` becomes `FILE`. Offline or unreachable: one line naming the trace, the
URL and the reason.

`--base-url` (or `DUALPOOL_TRACES_URL`) fetches every file from a mirror:
`BASE/FILE`, with FILE the upstream file name (tests point it at a local
server). Downloads use the standard library's HTTP client: these are TLS
sources behind redirects (GitHub, Azure blob storage), unlike the plain HTTP/1.1
the gateway and the bench speak.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dualpool.errors import DualpoolError

__all__ = ["TRACES", "FetchResult", "Trace", "TraceError", "fetch_trace", "trace_url"]

BASE_URL_ENV = "DUALPOOL_TRACES_URL"
_CHUNK = 1 << 20


class TraceError(DualpoolError):
    """A trace could not be fetched (unknown name, offline, bad checksum)."""


@dataclass(frozen=True, slots=True)
class Trace:
    """One public trace: where it lives and what it is."""

    name: str
    url: str
    # what the file holds, for `dualpool traces list`
    about: str
    # approximate size, bytes (for the listing; the server's length wins)
    size: int

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_AZ23 = "https://raw.githubusercontent.com/Azure/AzurePublicDataset/master/data/"
# The container name is spelled this way in Azure's own AzureLLMInferenceDataset2024.md.
_AZ24 = "https://azurepublicdatasettraces.blob.core.windows.net/azurellminfererencetrace/"

TRACES: dict[str, Trace] = {
    t.name: t
    for t in (
        Trace(
            "azure-2023-code",
            _AZ23 + "AzureLLMInferenceTrace_code.csv",
            "Azure LLM inference 2023, code: TIMESTAMP,ContextTokens,GeneratedTokens, ~1 h, 8,819 rows (CC-BY 4.0)",
            320_117,
        ),
        Trace(
            "azure-2023-conv",
            _AZ23 + "AzureLLMInferenceTrace_conv.csv",
            "Azure LLM inference 2023, conversation: same columns, ~1 h, 19,366 rows (CC-BY 4.0)",
            719_188,
        ),
        Trace(
            "azure-2024-code-week",
            _AZ24 + "AzureLLMInferenceTrace_code_1week.csv",
            "Azure LLM inference 2024, code, one week: 16.8M rows (CC-BY 4.0)",
            600_000_000,
        ),
        Trace(
            "azure-2024-conv-week",
            _AZ24 + "AzureLLMInferenceTrace_conv_1week.csv",
            "Azure LLM inference 2024, conversation, one week: 27.3M rows (CC-BY 4.0)",
            1_000_000_000,
        ),
        Trace(
            "sharegpt-8k-lengths",
            "https://raw.githubusercontent.com/microsoft/sarathi-serve/main/data/processed_traces/"
            "sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
            "ShareGPT prompt/output lengths (Llama-2 tokenizer), filtered to 8K (MIT)",
            950_000,
        ),
        Trace(
            "arxiv-summarization-lengths",
            "https://raw.githubusercontent.com/microsoft/vidur/main/data/processed_traces/"
            "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv",
            "arXiv summarization lengths (Llama-2 tokenizer): long prompts (MIT)",
            885_000,
        ),
    )
}


def trace_url(trace: Trace, base_url: str | None = None) -> str:
    """The URL to fetch from: upstream, or `BASE/FILE` on a mirror."""
    base = base_url if base_url is not None else os.environ.get(BASE_URL_ENV)
    if base:
        return base.rstrip("/") + "/" + trace.filename
    return trace.url


@dataclass(frozen=True, slots=True)
class FetchResult:
    path: Path
    sha256: str
    bytes: int
    # bytes that were already there (a resumed download), 0 for a fresh one
    resumed_from: int
    # True when the file was complete before (nothing downloaded)
    already: bool = False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def fetch_trace(
    name: str,
    directory: Path,
    *,
    base_url: str | None = None,
    sha256: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    timeout: float = 30.0,
) -> FetchResult:
    """Download trace `name` into `directory` (see the module doc); TraceError on failure.

    `progress(done_bytes, total_bytes_or_None)` is called as data arrives.
    """
    trace = TRACES.get(name)
    if trace is None:
        raise TraceError(f"unknown trace {name!r}; known: {', '.join(TRACES)}")
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / trace.filename
    part = final.with_name(final.name + ".part")
    sidecar = final.with_name(final.name + ".sha256")
    want = sha256.lower() if sha256 else None
    if want is None and sidecar.exists():
        want = sidecar.read_text().split()[0].lower()
    if final.exists():
        got = _sha256(final)
        if want is not None and got != want:
            raise TraceError(
                f"{final} exists but its SHA-256 is {got}, expected {want}; delete it to fetch again"
            )
        sidecar.write_text(f"{got}  {final.name}\n")
        return FetchResult(final, got, final.stat().st_size, 0, already=True)

    url = trace_url(trace, base_url)
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "dualpool-traces"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part is already whole
            resp = None
        else:
            raise TraceError(f"{name}: {url} answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TraceError(
            f"{name}: cannot reach {url} ({reason}); offline? fetch it elsewhere, or set "
            f"--base-url / {BASE_URL_ENV} to a mirror"
        ) from None
    resumed = have
    if resp is not None:
        with resp:
            status = resp.status
            if status == 200:
                resumed = have = 0  # no range support: start over
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            done = have
            try:
                with part.open("ab" if have else "wb") as f:
                    if progress is not None:
                        progress(done, total)
                    while block := resp.read(_CHUNK):
                        f.write(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, total)
            except (OSError, http.client.HTTPException) as exc:
                raise TraceError(
                    f"{name}: download interrupted after {done:,} bytes ({exc}); "
                    "run the same command again to resume"
                ) from None
            if total is not None and done != total:
                raise TraceError(
                    f"{name}: got {done:,} of {total:,} bytes; run the same command again to resume"
                )
    got = _sha256(part)
    if want is not None and got != want:
        bad = part.with_name(part.name + ".bad")
        part.replace(bad)
        raise TraceError(
            f"{name}: SHA-256 of the download is {got}, expected {want} (kept as {bad.name})"
        )
    part.replace(final)
    sidecar.write_text(f"{got}  {final.name}\n")
    return FetchResult(final, got, final.stat().st_size, resumed)
