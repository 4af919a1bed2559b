"""Shutdown steps are bounded even when the work ignores cancellation."""

from __future__ import annotations

import asyncio
import time

from compgrid_runtime.app import _bounded


async def test_a_step_that_swallows_cancellation_is_abandoned_on_time() -> None:
    released = asyncio.Event()

    async def stubborn() -> None:
        while not released.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue  # what a client library does while it reconnects

    started = time.monotonic()
    finished = await _bounded("stubborn", stubborn(), 0.2)
    assert finished is False
    assert time.monotonic() - started < 1.0
    released.set()


async def test_a_failing_step_counts_as_finished_and_does_not_raise() -> None:
    async def broken() -> None:
        raise ConnectionError("bus is gone")

    assert await _bounded("broken", broken(), 1.0) is True


async def test_a_quick_step_finishes() -> None:
    done: list[int] = []

    async def quick() -> None:
        done.append(1)

    assert await _bounded("quick", quick(), 1.0) is True
    assert done == [1]
