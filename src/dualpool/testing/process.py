"""`python -m dualpool ...` as a real subprocess that announces itself with one JSON line.

    with DualpoolProcess(["emulate", "--port", "0"], cpu=1) as p:
        p.ready                       # the JSON object its first stdout line carried
        p.kill()                      # SIGKILL (a crash); p.terminate() sends SIGTERM

The faces' test helpers build on it (`EmulatorProcess`, `ExtProcProcess`). Its stderr
goes to a temporary file (read with `stderr_text()`), so a chatty process never
blocks on a full pipe.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import IO, Any, Self

__all__ = ["DualpoolProcess"]


class DualpoolProcess:
    """`python -m dualpool ARGS`, started when its ready line (JSON) has been read."""

    def __init__(
        self, args: Sequence[str], *, cpu: int | None = None, start_timeout: float = 60.0
    ) -> None:
        self.cmd = [sys.executable, "-m", "dualpool", *args]
        self._cpu = cpu
        self._timeout = start_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.ready: dict[str, Any] = {}
        self._err: IO[bytes] | None = None

    def start(self) -> Self:
        preexec: Callable[[], None] | None = None
        if self._cpu is not None and hasattr(os, "sched_setaffinity"):
            cpu = self._cpu

            def preexec() -> None:
                os.sched_setaffinity(0, {cpu})

        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=self._err, text=True, preexec_fn=preexec
        )
        line = self._first_line()
        if not line:
            self.kill()
            raise RuntimeError(f"{' '.join(self.cmd[2:4])} did not start: {self.stderr_text()}")
        self.ready = json.loads(line)
        return self

    def _first_line(self) -> str:
        out: list[str] = []

        def read() -> None:
            if self.proc is not None and self.proc.stdout is not None:
                out.append(self.proc.stdout.readline())

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(self._timeout)
        return out[0] if out else ""

    def stderr_text(self, limit: int = 4000) -> str:
        """The last `limit` characters the process wrote to stderr."""
        if self._err is None:
            return ""
        self._err.seek(0)
        return self._err.read().decode(errors="replace")[-limit:].strip()

    def kill(self) -> None:
        """SIGKILL: the process disappears without a goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait (SIGKILL after `timeout`); the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def stop(self, timeout: float = 30.0) -> None:
        """Terminate (as `terminate`) and release its pipe and stderr file."""
        if self.proc is not None:
            self.terminate(timeout)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        if self._err is not None:
            self._err.close()
            self._err = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
