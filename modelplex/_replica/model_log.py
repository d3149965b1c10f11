"""What a replica's caches load and let go, told to the controller as it happens.

The status and the live page used to learn loads by comparing what replicas held from one
look to the next, so a model loaded and evicted between two looks was never seen, and a load
counted only if some router's report caught it. Here each load, failed load and eviction
becomes a ``ModelEvent`` the moment the cache makes it, and goes to the controller on the
replica's control channel, in order, a batch per turn of the control loop (``ModelEvents``).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from .._data.channel import ConnectionClosed
from .._events import CacheEvents
from .._messages import ModelEvent, ModelEvents

__all__ = ["ModelLog", "Outgoing"]


class ModelLog:
    """A cache's events: loads, failed loads and evictions are told (``tell``); every event
    also goes on to ``inner`` (the metrics). The per-request ones go straight to ``inner``."""

    def __init__(
        self,
        inner: CacheEvents,
        tell: Callable[[ModelEvent], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._inner = inner
        self._tell = tell
        self._clock = clock
        self.requested = inner.requested
        self.kept = inner.kept
        self.unloaded = inner.unloaded
        self.holds = inner.holds

    def loaded(self, model_id: str, seconds: float) -> None:
        self._inner.loaded(model_id, seconds)
        self._tell(ModelEvent(self._clock(), "loaded", model_id, seconds))

    def load_failed(self, model_id: str, timed_out: bool) -> None:
        self._inner.load_failed(model_id, timed_out)
        reason = "timeout" if timed_out else "error"
        self._tell(ModelEvent(self._clock(), "load_failed", model_id, reason=reason))

    def evicted(self, model_id: str, reason: str) -> None:
        self._inner.evicted(model_id, reason)
        self._tell(ModelEvent(self._clock(), "unloaded", model_id, reason=reason))


class Outgoing:
    """Events told on any thread, sent on the control loop, one message per batch, once the
    controller knows this replica (``start``)."""

    def __init__(self, replica_id: str, loop: Any) -> None:
        self._replica_id = replica_id
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[ModelEvent] = []
        self._scheduled = False
        self._conn: Any = None

    def tell(self, event: ModelEvent) -> None:
        with self._lock:
            self._pending.append(event)
            if self._scheduled or self._conn is None:
                return
            self._scheduled = True
        self._loop.call_soon_threadsafe(self._send)

    def start(self, conn: Any) -> None:
        """On the control loop, once the controller has this replica's ``ReplicaReady``."""
        self._conn = conn
        self._send()

    def _send(self) -> None:
        with self._lock:
            events, self._pending = self._pending, []
            self._scheduled = False
        if not events or self._conn is None:
            return
        try:
            self._conn.send_nowait(ModelEvents(self._replica_id, tuple(events)))
        except ConnectionClosed:
            pass  # the controller is gone; so is anyone who would read these
