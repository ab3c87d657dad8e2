"""Helpers of the gateway tests: fake vLLM backends as processes, a gateway in a thread."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from dualpool.gateway import GatewayServer, parse_config

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


class GatewayThread:
    """A GatewayServer on its own event loop (uvloop) in a daemon thread."""

    def __init__(self, config: dict[str, Any]) -> None:
        import uvloop

        self.config = parse_config(config)
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = GatewayServer(self.config)
        self.gateway = self.call(self.server.start(port=0))
        self.port = self.server.port

    def call(self, coro: Any, timeout: float = 30) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def run(self, fn: Callable[[], Any]) -> Any:
        """Run a plain function on the gateway's loop (to read its state safely)."""

        async def wrap() -> Any:
            return fn()

        return self.call(wrap())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        try:
            self.call(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


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
