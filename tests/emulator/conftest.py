"""Shared emulator fixtures: real sockets on 127.0.0.1, ephemeral ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from emu_helpers import MODEL

from dualpool.emulator import EmulatorConfig
from dualpool.emulator.testing import EmulatorThread


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorThread]:
    """Llama-3.1-8B on one H100, 50x faster than modelled."""
    cfg = EmulatorConfig(model=MODEL, gpu="h100-80gb", port=0, speedup=50, max_model_len=8192)
    with EmulatorThread(cfg) as e:
        yield e
