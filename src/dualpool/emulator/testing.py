"""Start emulated pools from tests: in a background thread, or as a subprocess.

    from dualpool.emulator import EmulatorConfig
    from dualpool.emulator.testing import EmulatorThread, EmulatorProcess, emulator_fixture

    with EmulatorThread(EmulatorConfig(port=0, speedup=50, instances=2)) as emu:
        emu.urls                      # real sockets on 127.0.0.1

    with EmulatorProcess(["--model", "llama-3.1-8b", "--speedup", "50"]) as proc:
        proc.urls                     # `dualpool emulate` in its own process (own core,
                                      # own GIL); proc.terminate() sends SIGTERM

    short_pool = emulator_fixture(EmulatorConfig(port=0, max_model_len=8192), scope="module")

`EmulatorThread` is the cheap choice for functional tests. Prefer
`EmulatorProcess` when timing matters: a test client in the same process
competes with the engine loop for the GIL.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

from dualpool.emulator._config import EmulatorConfig
from dualpool.emulator._server import EmulatorServer
from dualpool.testing.process import DualpoolProcess

__all__ = ["EmulatorProcess", "EmulatorThread", "emulator_fixture"]


class EmulatorThread:
    """An `EmulatorServer` on its own event loop in a daemon thread."""

    def __init__(self, config: EmulatorConfig, *, start_timeout: float = 30.0) -> None:
        self.config = config
        # Built here so config errors raise in the caller's thread.
        self.server = EmulatorServer(config)
        self._timeout = start_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def ports(self) -> list[int]:
        return self.server.ports

    @property
    def urls(self) -> list[str]:
        return self.server.urls

    def start(self) -> EmulatorThread:
        self._thread = threading.Thread(target=self._run, name="dualpool-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._timeout):
            raise TimeoutError("emulator did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopped = asyncio.Event()
            try:
                await self.server.start()
            except BaseException as e:
                self._error = e
                self._ready.set()
                return
            self._ready.set()
            await self._stopped.wait()
            await self.server.stop(grace=0.0)

        asyncio.run(main())

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the emulator's loop thread and return its result (for state peeks)."""
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(_call(fn), self._loop)
        return fut.result(10)

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(30)
        self._thread = None

    def __enter__(self) -> EmulatorThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def _call(fn: Callable[[], Any]) -> Any:
    return fn()


class EmulatorProcess(DualpoolProcess):
    """`dualpool emulate ARGS --port 0` as a subprocess; ports read from its ready line."""

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        start_timeout: float = 60.0,
        cpu: int | None = None,
    ) -> None:
        self.args = [*args]
        if "--port" not in self.args:
            self.args += ["--port", "0"]
        super().__init__(["emulate", *self.args], cpu=cpu, start_timeout=start_timeout)

    @property
    def ports(self) -> list[int]:
        return list(self.ready.get("ports", []))

    @property
    def urls(self) -> list[str]:
        return list(self.ready.get("urls", []))


def emulator_fixture(config: EmulatorConfig, *, scope: str = "module") -> Any:
    """A pytest fixture yielding a started `EmulatorThread` for `config` (port 0 advised)."""
    import pytest

    def fixture() -> Iterator[EmulatorThread]:
        with EmulatorThread(config) as emu:
            yield emu

    return pytest.fixture(scope=scope)(fixture)  # type: ignore[call-overload]
