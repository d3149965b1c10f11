"""Model management inside a replica: list, preload, pin, unload, resize.

Routers reach these through ordinary calls to reserved method names, so management needs no
second channel and works wherever the data plane does. Preloading goes through the cache of the
deployment's own multiplexed loader (found by its marker), created if no request has yet.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from ._cache import ModelCache
from ._errors import NoModelLoaderError

PREFIX = "__modelplex_"
LIST, PRELOAD, PIN, UNPIN, UNLOAD, CONFIGURE, WARM, ARTIFACTS, PROBE = (
    f"{PREFIX}{name}__"
    for name in (
        "models", "preload", "pin", "unpin", "unload", "configure", "warm", "artifacts", "probe"
    )
)


@dataclass(frozen=True)
class ModelStatus:
    """One model on one replica, as ``serve.list_models`` reports it."""

    replica_id: str
    model_id: str
    state: str  # "loaded" or "loading"
    size_bytes: int | None = None
    idle_s: float | None = None  # seconds since its last use
    load_s: float | None = None
    pinned: bool = False
    in_use: int = 0


@dataclass(frozen=True)
class ArtifactStatus:
    """One artifact in one node's disk cache, as ``serve.list_artifacts`` reports it."""

    node_id: str
    uri: str  # without credentials: no userinfo, no query string
    kind: str  # "file" or "directory"
    size_bytes: int
    last_used: float  # Unix time of its last fetch
    held: bool  # a model loaded from it is in memory in a live replica on the node


@dataclass(frozen=True)
class ReplicaProbe:
    """What a replica says of itself for ``serve.status``: where it runs, its load, its models."""

    node: str
    pid: int
    ongoing: int  # requests running in the replica, this probe not counted
    models: tuple[ModelStatus, ...]


@dataclass(frozen=True)
class CacheLimits:
    max_models: Any
    max_bytes: Any


class Admin:
    """The replica's management operations, run on the user loop."""

    def __init__(
        self,
        replica_id: str,
        instance: Any,
        caches: list[ModelCache],
        *,
        node: str = "",
        ongoing: Callable[[], int] = lambda: 0,
    ) -> None:
        self._replica_id = replica_id
        self._instance = instance
        self._caches = caches  # shared with the replica: caches appear as loaders first run
        self._node = node
        self._ongoing = ongoing  # the replica's count of running requests, this call included
        self.limits: CacheLimits | None = None

    def handles(self, method: str) -> bool:
        return method.startswith(PREFIX)

    async def run(self, method: str, args: tuple) -> Any:
        if method == LIST:
            return self.models()
        if method == PROBE:
            models = tuple(self.models())
            return ReplicaProbe(self._node, os.getpid(), max(0, self._ongoing() - 1), models)
        if method == PRELOAD:
            return await self.preload(*args)
        if method == PIN:
            await self.preload(*args)
            for cache in self._caches_holding(args[0]):
                cache.pin(args[0])
            return True
        if method == UNPIN:
            for cache in self._caches_holding(args[0]):
                cache.unpin(args[0])
            return True
        if method == UNLOAD:
            results = [await cache.unload(args[0]) for cache in list(self._caches)]
            return any(results)
        if method == WARM:
            return await self.warm(*args)
        if method == ARTIFACTS:
            from ._disk_cache import node_artifacts

            return await asyncio.to_thread(node_artifacts)
        if method == CONFIGURE:
            self.configure(*args)
            return True
        raise AttributeError(f"unknown management operation {method!r}")

    def models(self) -> list[ModelStatus]:
        now = time.monotonic()
        out: list[ModelStatus] = []
        for cache in list(self._caches):
            snapshot = cache.snapshot()
            for info in snapshot.loaded:
                out.append(
                    ModelStatus(
                        self._replica_id, info.model_id, "loaded", info.size,
                        round(max(0.0, now - info.last_used), 3), round(info.load_s, 4),
                        info.pinned, info.in_use,
                    )
                )
            out.extend(ModelStatus(self._replica_id, m, "loading") for m in snapshot.loading)
        return out

    async def preload(self, model_id: str) -> bool:
        """Load through the cache, admitted whatever an admission policy would say."""
        caches = self._loader_caches()
        if not caches:
            raise NoModelLoaderError(self._replica_id)
        for cache in caches:
            cache.admit(model_id)
            await cache.get(model_id)
        return True

    async def warm(self, model_id: str) -> bool:
        """Run each loader until its first ``serve.fetch`` has the artifact on disk; no cache
        sees the model, so no memory slot is taken and nothing is evicted."""
        loaders = self._loaders()
        if not loaders:
            raise NoModelLoaderError(self._replica_id)
        for loader in loaders:
            await loader._modelplex_warm(self._instance, model_id)
        return True

    def configure(self, max_models: Any, max_bytes: Any) -> None:
        """Resize every cache now, and those created later (see ``apply_limits``)."""
        self.limits = CacheLimits(max_models, max_bytes)
        for cache in list(self._caches):
            self.apply_limits(cache)

    def apply_limits(self, cache: ModelCache) -> None:
        if self.limits is None:
            return
        changes = {}
        if self.limits.max_models is not None:
            changes["max_models"] = self.limits.max_models
        if self.limits.max_bytes is not None:
            changes["max_bytes"] = self.limits.max_bytes or None
        cache.resize(**changes)

    def _caches_holding(self, model_id: str) -> list[ModelCache]:
        return [cache for cache in self._caches if model_id in cache]

    def _loaders(self) -> list[Any]:
        cls = type(self._instance)
        loaders = [getattr(cls, name, None) for name in dir(cls)]
        return [loader for loader in loaders if getattr(loader, "_modelplex_multiplexed", False)]

    def _loader_caches(self) -> list[ModelCache]:
        """The cache of each multiplexed loader of the deployment, created if need be."""
        return [loader._modelplex_cache_for(self._instance) for loader in self._loaders()]
