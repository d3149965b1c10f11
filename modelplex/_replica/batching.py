"""``@serve.batch``'s policy: which batches leave when. Pure: time is an argument.

Batches are keyed by the request's multiplexed model id from the start, so a batch never mixes
ids, and ``max_concurrent_batches`` counts per model id: a batch waiting on a cold model's load
holds up later batches of that model only. Calls that arrive while a model's batches are all in
flight wait in its queue and leave together, up to ``max_batch_size``, as soon as a batch
finishes. The decorator and the shell that runs this on an event loop are ``_user/batch.py``.
"""

from __future__ import annotations

import math
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Protocol, TypeVar

__all__ = [
    "Batch", "BatchQueues", "BatchSettings", "check_batch_wait_timeout_s",
    "check_max_batch_size", "check_max_concurrent_batches",
]

T = TypeVar("T")


class Listener(Protocol):
    def poke(self) -> None:
        """A limit changed: look again (from any thread)."""


# ---- settings ------------------------------------------------------------------------------


def check_max_batch_size(value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # as Ray: 8.0 is 8
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_batch_size must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"max_batch_size must be an integer >= 1, got {value!r}")
    return value


def check_batch_wait_timeout_s(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"batch_wait_timeout_s must be a number >= 0, got {value!r}")
    if not 0 <= value < math.inf:  # also rejects NaN
        raise ValueError(f"batch_wait_timeout_s must be a finite number >= 0, got {value!r}")
    return float(value)


def check_max_concurrent_batches(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_concurrent_batches must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"max_concurrent_batches must be an integer >= 1, got {value!r}")
    return value


class BatchSettings:
    """The limits of one decorated function, shared by its queues and changed live."""

    def __init__(self, max_batch_size: int, batch_wait_timeout_s: float,
                 max_concurrent_batches: int) -> None:
        self.max_batch_size = check_max_batch_size(max_batch_size)
        self.batch_wait_timeout_s = check_batch_wait_timeout_s(batch_wait_timeout_s)
        self.max_concurrent_batches = check_max_concurrent_batches(max_concurrent_batches)
        # Batchers to wake when a limit changes (a batch may now be due or full).
        self._listeners: weakref.WeakSet[Listener] = weakref.WeakSet()

    def set_max_batch_size(self, value: int) -> None:
        self.max_batch_size = check_max_batch_size(value)
        self._changed()

    def set_batch_wait_timeout_s(self, value: float) -> None:
        self.batch_wait_timeout_s = check_batch_wait_timeout_s(value)
        self._changed()

    def listen(self, listener: Listener) -> None:
        self._listeners.add(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener.poke()

    def __getstate__(self) -> dict:
        # Shipped to replicas with the user's class: the live batchers stay behind.
        state = dict(self.__dict__)
        state["_listeners"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._listeners = weakref.WeakSet()


# ---- the pure queue logic ------------------------------------------------------------------


@dataclass(frozen=True)
class Batch(Generic[T]):
    key: str  # the model id ("" without one)
    items: list[T]


@dataclass
class _Queue:
    pending: deque = field(default_factory=deque)  # (item, arrival time)
    in_flight: int = 0


class BatchQueues(Generic[T]):
    """Items queued per key; ``take(now)`` hands out the batches due, ``done(key)`` frees a
    batch's slot, ``next_deadline()`` says when to look again.

    A key's batch leaves when the key has fewer than ``max_concurrent_batches`` in flight and
    it is full (``max_batch_size`` items, or ``size_of`` reaching it) or its oldest item has
    waited ``batch_wait_timeout_s``. Items ``alive`` rejects (cancelled callers) are dropped.
    """

    def __init__(self, settings: BatchSettings, *, alive: Callable[[T], bool] = lambda _: True,
                 size_of: Callable[[list[T]], int] | None = None) -> None:
        self._settings = settings
        self._alive = alive
        self._size_of = size_of
        self._queues: dict[str, _Queue] = {}

    def put(self, key: str, item: T, now: float) -> None:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue()
        queue.pending.append((item, now))

    def done(self, key: str) -> None:
        queue = self._queues[key]
        queue.in_flight -= 1
        self._forget_if_idle(key, queue)

    def take(self, now: float) -> list[Batch[T]]:
        """The batches due at ``now``, oldest first."""
        batches = []
        for key, queue in sorted(self._queues.items(), key=self._oldest):
            while queue.in_flight < self._settings.max_concurrent_batches:
                self._drop_dead(queue)
                if not queue.pending:
                    break
                count, full = self._fill(queue.pending)
                waited = now - queue.pending[0][1]
                if not full and waited < self._settings.batch_wait_timeout_s:
                    break
                items = [queue.pending.popleft()[0] for _ in range(count)]
                queue.in_flight += 1
                batches.append(Batch(key, items))
            self._forget_if_idle(key, queue)
        return batches

    def next_deadline(self) -> float | None:
        """When the oldest item of a key with a free slot will have waited long enough."""
        limit = self._settings.max_concurrent_batches
        times = [
            queue.pending[0][1] for queue in self._queues.values()
            if queue.pending and queue.in_flight < limit
        ]
        return min(times) + self._settings.batch_wait_timeout_s if times else None

    def pending(self, key: str) -> int:
        queue = self._queues.get(key)
        return len(queue.pending) if queue is not None else 0

    def in_flight(self, key: str) -> int:
        queue = self._queues.get(key)
        return queue.in_flight if queue is not None else 0

    def keys(self) -> list[str]:
        return list(self._queues)

    # ---- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _oldest(entry: tuple[str, _Queue]) -> float:
        pending = entry[1].pending
        return pending[0][1] if pending else math.inf

    def _drop_dead(self, queue: _Queue) -> None:
        if any(not self._alive(item) for item, _ in queue.pending):
            queue.pending = deque(p for p in queue.pending if self._alive(p[0]))

    def _fill(self, pending: deque) -> tuple[int, bool]:
        """How many of the oldest items make the next batch, and whether it is full."""
        limit = self._settings.max_batch_size
        if self._size_of is None:
            return min(len(pending), limit), len(pending) >= limit
        items: list[T] = []
        for item, _ in pending:
            items.append(item)
            size = self._size_of(items)
            if size > limit:  # this one does not fit: the batch is full without it
                return max(1, len(items) - 1), True  # an oversized first item goes alone
            if size == limit:
                return len(items), True
        return len(items), False

    def _forget_if_idle(self, key: str, queue: _Queue) -> None:
        if not queue.pending and queue.in_flight == 0:
            self._queues.pop(key, None)
