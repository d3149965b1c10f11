"""Waiting on the controller's injected time, and the tasks it leaves running.

Every wait of the controller with a time limit goes through ``wait_for``, which races what it
waits on against the injected ``sleep`` (``asyncio.wait_for`` would count wall time), so the
unit tests move time with a fake clock instead of waiting for it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Coroutine, TypeVar

__all__ = ["Background", "Clock", "Sleep", "wait_for"]

T = TypeVar("T")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]


async def wait_for(awaitable: Awaitable[T], timeout: float, sleep: Sleep) -> T:
    """``asyncio.wait_for`` on the injected time: the result, or ``asyncio.TimeoutError`` once
    ``sleep(timeout)`` ends first (the awaitable is then cancelled, and has ended on return)."""
    task = asyncio.ensure_future(awaitable)
    timer = asyncio.ensure_future(sleep(max(0.0, timeout)))
    timed_out = False
    try:
        await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
        if not task.done():
            timed_out = True
            task.cancel()
            # It may hold a lock it is taking back (Condition.wait_for): let it end first.
            await asyncio.wait({task})
    if timed_out:
        raise asyncio.TimeoutError()
    return task.result()


class Background:
    """The controller's tasks that nobody awaits (replicas followed, health checks, stops):
    kept so that they are not collected while they run, and cancelled at shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
