"""Helpers of the gateway tests: fake vLLM backends as processes, a gateway in a thread."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from dualpool.gateway.testing import GatewayThread

__all__ = ["FakeBackend", "GatewayThread", "fleet_config"]

FAKE = Path(__file__).with_name("fake_vllm.py")


class FakeBackend:
    """A fake vLLM server process on 127.0.0.1; kill() and restart() keep its port."""

    def __init__(self, max_model_len: int, **opts: Any) -> None:
        self.max_model_len = max_model_len
        self.opts = opts
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, str(FAKE), "--port", str(self.port)]
        cmd += ["--max-model-len", str(self.max_model_len)]
        for k, v in self.opts.items():
            cmd += [f"--{k.replace('_', '-')}", str(v)]
        return cmd

    def start(self) -> FakeBackend:
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"fake backend did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=5) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data

    def control(self, **settings: Any) -> None:
        req = urllib.request.Request(
            f"{self.url}/control", data=json.dumps(settings).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()


def fleet_config(
    short: FakeBackend | list[FakeBackend], long: FakeBackend, **extra: Any
) -> dict[str, Any]:
    shorts = short if isinstance(short, list) else [short]
    cfg: dict[str, Any] = {
        "pools": [
            {"name": "short", "endpoints": [b.url for b in shorts], "threshold": 2048},
            {"name": "long", "endpoints": [long.url]},
        ],
        "health": {"interval": 0.2, "metrics_interval": 0.2, "timeout": 1.0},
        "timeouts": {"connect": 1.0, "first_byte": 10.0, "idle": 10.0, "drain": 5.0},
        "log": {"level": "warning", "access": "debug"},
    }
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg
