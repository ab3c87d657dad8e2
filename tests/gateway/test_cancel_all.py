"""Shutdown waits for background tasks, bounded (gateway/_server.py `_cancel_all`)."""

from __future__ import annotations

import asyncio
import contextlib

from dualpool.gateway._server import _cancel_all


async def _swallows_once() -> None:
    """A periodic loop whose first cancellation is lost (Python 3.11's wait_for race)."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(3600)
    while True:
        await asyncio.sleep(0.01)


async def _ignores_cancellation(stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await stop.wait()
        except asyncio.CancelledError:
            continue


def test_a_task_that_swallows_one_cancellation_still_stops() -> None:
    async def main() -> bool:
        task = asyncio.ensure_future(_swallows_once())
        await asyncio.sleep(0)
        await _cancel_all([task])
        return task.cancelled()

    assert asyncio.run(main())


def test_a_task_that_never_stops_does_not_hang_the_shutdown() -> None:
    async def main() -> bool:
        stop = asyncio.Event()
        task = asyncio.ensure_future(_ignores_cancellation(stop))
        await asyncio.sleep(0)
        await _cancel_all([task], rounds=2)
        done = task.done()
        stop.set()  # let it end, so the loop can close
        await task
        return done

    assert asyncio.run(main()) is False


def test_failed_and_finished_tasks_are_fine() -> None:
    async def boom() -> None:
        raise RuntimeError("x")

    async def main() -> None:
        a = asyncio.ensure_future(boom())
        b = asyncio.ensure_future(asyncio.sleep(0))
        await asyncio.sleep(0.01)
        await _cancel_all([a, b])

    asyncio.run(main())
