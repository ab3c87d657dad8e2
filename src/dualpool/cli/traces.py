"""`dualpool traces`: list the public traces the workload module reads, and fetch them.

  dualpool traces list
  dualpool traces fetch NAME [--dir DIR] [--sha256 HEX] [--base-url URL]

A fetch shows progress, resumes an interrupted download (HTTP Range), checks
the file's SHA-256 (against --sha256, else the one recorded by an earlier
fetch in DIR/FILE.sha256, which it writes), and prints the path to pass to
`dualpool simulate|plan|bench`. --base-url (or DUALPOOL_TRACES_URL) fetches
from a mirror holding the files under their upstream names.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "traces",
        help="list and download the public traces (Azure 2023/2024, ShareGPT, arXiv lengths)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    ls = verbs.add_parser("list", help="the traces known by name")
    ls.set_defaults(func=run_list)
    f = verbs.add_parser("fetch", help="download one trace (resumable, checksummed)")
    f.add_argument("name", help="trace name (see `dualpool traces list`)")
    f.add_argument("--dir", default="traces", help="folder to put it in (default ./traces)")
    f.add_argument("--sha256", default=None, help="expected SHA-256 of the file")
    f.add_argument("--base-url", default=None, help="mirror base URL (default: upstream)")
    f.add_argument("--timeout", type=float, default=30.0, help="network timeout, s (default 30)")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.set_defaults(func=run_fetch)

    def usage(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=usage)


def run_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from dualpool.traces import TRACES

    t = Table(title="Public traces (dualpool traces fetch NAME)")
    for col in ("name", "file", "about"):
        t.add_column(col)
    for tr in TRACES.values():
        t.add_row(tr.name, tr.filename, tr.about)
    Console().print(t)
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    from dualpool.traces import fetch_trace

    err = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
        disable=args.no_progress or not err.is_terminal,
    ) as bar:
        task = bar.add_task(args.name, total=None)

        def progress(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        res = fetch_trace(
            args.name,
            Path(args.dir),
            base_url=args.base_url,
            sha256=args.sha256,
            progress=progress,
            timeout=args.timeout,
        )
    how = (
        "already present"
        if res.already
        else f"resumed at {res.resumed_from:,} bytes"
        if res.resumed_from
        else "downloaded"
    )
    print(f"{res.path} ({res.bytes:,} bytes, {how}; sha256 {res.sha256})")
    return 0
