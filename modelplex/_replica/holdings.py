"""What one replica holds, as routers see it, and which models it is about to need.

A replica may have several caches (one per multiplexed loader); routers get one
``ModelsUpdate`` for all of them: every loaded model with its load time, the loads under way,
whether a new model fits without an eviction, and the slots in all. The models wanted are those
of requests that reached the replica and have not finished, and those a router's ``Touch`` says
still wait for it: caches evict them last, so a request already on its way never finds its
model just unloaded.

Owned by the replica's user loop, which owns the caches; ``wanted`` may be read from another
thread. Time is the injected ``clock``.
"""

from __future__ import annotations

import time
from typing import Callable, Protocol, Sequence

from .._messages import ModelsUpdate
from .entries import ModelsSnapshot

__all__ = ["AWAITED_S", "HeldCache", "Holdings"]

# A Touch keeps its model wanted this long; routers repeat it while requests still wait.
AWAITED_S = 0.2


class HeldCache(Protocol):
    """What the fold reads of a model cache."""

    @property
    def max_models(self) -> int: ...

    def snapshot(self) -> ModelsSnapshot: ...

    def touch(self, model_id: str) -> None: ...


class Holdings:
    def __init__(
        self,
        replica_id: str,
        caches: Sequence[HeldCache],
        *,
        clock: Callable[[], float] = time.monotonic,
        awaited_s: float = AWAITED_S,
    ) -> None:
        self._replica_id = replica_id
        self._caches = caches  # the replica's list: caches appear as loaders first run
        self._clock = clock
        self._awaited_s = awaited_s
        self._requests: dict[str, int] = {}  # model id -> requests here for it, not finished
        self._awaited: dict[str, float] = {}  # model id -> until when a Touch counts it
        self._version = 0

    def arrived(self, model_id: str) -> None:
        """A request for ``model_id`` reached this replica."""
        self._requests[model_id] = self._requests.get(model_id, 0) + 1

    def finished(self, model_id: str) -> None:
        if self._requests.get(model_id, 1) <= 1:
            self._requests.pop(model_id, None)
        else:
            self._requests[model_id] -= 1

    def touch(self, model_id: str) -> None:
        """Requests for ``model_id`` wait at a router for this replica: recent in every cache
        that holds it, and wanted for a while."""
        for cache in list(self._caches):
            cache.touch(model_id)
        self._awaited[model_id] = self._clock() + self._awaited_s

    def wanted(self) -> frozenset[str]:
        """Models that requests here, or queued for here at a router, are about to use."""
        now = self._clock()
        for model_id in [m for m, until in self._awaited.items() if until < now]:
            del self._awaited[model_id]
        # dict() copies atomically: a cache may ask from another thread.
        return frozenset(dict(self._requests)) | frozenset(self._awaited)

    def update(self) -> ModelsUpdate:
        """Every cache folded into one update, numbered after the last."""
        loaded: dict[str, float] = {}
        loading: list[str] = []
        has_room = True
        slots = 0
        for cache in list(self._caches):
            snapshot = cache.snapshot()
            for info in snapshot.loaded:
                loaded[info.model_id] = info.load_s
            loading.extend(snapshot.loading)
            limit = cache.max_models
            if limit != -1 and len(snapshot.loaded) + len(snapshot.loading) >= limit:
                has_room = False
            slots = -1 if limit == -1 or slots == -1 else slots + limit
        self._version += 1
        return ModelsUpdate(
            self._replica_id, self._version, loaded, tuple(loading), has_room, slots
        )
