"""Models on their way out of memory: each one's ``__del__`` runs in a task of its own.

An unload never blocks the cache that started it (requests keep being served while a large
model frees its memory), and the cache can still wait for every unload it started when it
closes. The log lines of an unload come from here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from .._events import CacheEvents
from .finalizer import finalize

__all__ = ["Unloads"]


class Unloads:
    def __init__(
        self,
        *,
        clock: Callable[[], float],
        logger: logging.Logger,
        events: CacheEvents,
        on_unloaded: Callable[[str], None] | None = None,
    ) -> None:
        self._clock = clock
        self._logger = logger
        self._events = events
        # Told when a loaded model has left memory (its ``__del__`` ran), so the disk tier
        # knows its artifacts are no longer held.
        self._on_unloaded = on_unloaded
        self._tasks: set[asyncio.Task] = set()

    def start(self, model_id: str, model: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(
            self._unload(model_id, model), name=f"modelplex-unload-{model_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait(self) -> None:
        """Until every unload started so far (and any it starts) has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _unload(self, model_id: str, model: Any) -> None:
        self._logger.info("Unloading model '%s'.", model_id)
        start = self._clock()
        try:
            await finalize(model)
        except Exception:
            self._logger.exception("Error in __del__ of model '%s'.", model_id)
            return
        finally:
            if self._on_unloaded is not None:
                try:
                    self._on_unloaded(model_id)
                except Exception:
                    self._logger.exception("The model cache's on_unloaded callback failed.")
        elapsed_ms = (self._clock() - start) * 1000
        self._events.unloaded(model_id, elapsed_ms / 1000)
        self._logger.info("Successfully unloaded model '%s' in %.1fms.", model_id, elapsed_ms)
