"""Fixtures of the gateway tests: fake vLLM backends as processes, a gateway in a thread.

`backend_factory` starts backends by command line (`FakeBackend.command` in
gw_helpers.py), so the vLLM emulator (`dualpool emulate`) can replace
`fake_vllm.py` in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gw_helpers import FakeBackend, GatewayThread


@pytest.fixture
def backend_factory() -> Iterator[Callable[..., FakeBackend]]:
    started: list[FakeBackend] = []

    def make(max_model_len: int, **opts: Any) -> FakeBackend:
        b = FakeBackend(max_model_len, **opts).start()
        started.append(b)
        return b

    yield make
    for b in started:
        b.kill()


@pytest.fixture
def gateway_factory() -> Iterator[Callable[[dict[str, Any]], GatewayThread]]:
    started: list[GatewayThread] = []

    def make(config: dict[str, Any]) -> GatewayThread:
        gw = GatewayThread(config)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()
