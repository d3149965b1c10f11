"""Model management inside a replica: list, preload, pin, unload, resize.

Routers reach these through ordinary calls to reserved method names, so management needs no
second channel and works wherever the data plane does. Preloading goes through the cache of the
deployment's own multiplexed loaders (under the names its ``DeploymentInterface`` records),
created if no request has yet.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Awaitable, Callable, Protocol

from .cache import ModelCache
from .._errors import NoModelLoaderError
from .._specs import LoaderSpec
from .._types import ADMIN_PREFIX, AdminOp, CacheLimits, ModelStatus, ReplicaProbe

# Where a ``@serve.multiplexed`` wrapper keeps what the admin uses of it (a ``Loader``).
LOADER_ATTR = "_modelplex_loader"


class Loader(Protocol):
    """A multiplexed loader, as management uses it (``_user.multiplex.MultiplexedLoader``)."""

    @property
    def cache_for(self) -> Callable[[Any], ModelCache]: ...

    @property
    def warm(self) -> Callable[[Any, str], Awaitable[bool]]: ...


class Admin:
    """The replica's management operations, run on the user loop."""

    def __init__(
        self,
        replica_id: str,
        instance: Any,
        caches: list[ModelCache],
        *,
        loaders: tuple[LoaderSpec, ...] = (),
        node: str = "",
        ongoing: Callable[[], int] = lambda: 0,
    ) -> None:
        self._replica_id = replica_id
        self._instance = instance
        self._caches = caches  # shared with the replica: caches appear as loaders first run
        self._loader_names = tuple(spec.attr for spec in loaders)
        self._node = node
        self._ongoing = ongoing  # the replica's count of running requests (management not counted)
        self.limits: CacheLimits | None = None
        self._ops: dict[AdminOp, Callable[..., Awaitable[Any]]] = {
            AdminOp.LIST: self._list,
            AdminOp.PROBE: self._probe,
            AdminOp.PRELOAD: self.preload,
            AdminOp.WARM: self.warm,
            AdminOp.PIN: self._pin,
            AdminOp.UNPIN: self._unpin,
            AdminOp.UNLOAD: self._unload,
            AdminOp.ARTIFACTS: self._artifacts,
            AdminOp.CONFIGURE: self._configure,
        }

    def handles(self, method: str) -> bool:
        return method.startswith(ADMIN_PREFIX)

    async def run(self, method: str, args: tuple) -> Any:
        """Run the operation a reserved method name on the wire names (see ``AdminOp``)."""
        try:
            op = AdminOp(method)
        except ValueError:
            raise AttributeError(f"unknown management operation {method!r}") from None
        return await self._ops[op](*args)

    async def _list(self) -> list[ModelStatus]:
        return self.models()

    async def _probe(self) -> ReplicaProbe:
        models = tuple(self.models())
        return ReplicaProbe(self._node, os.getpid(), self._ongoing(), models)

    async def _pin(self, model_id: str) -> bool:
        await self.preload(model_id)
        for cache in self._caches_holding(model_id):
            cache.pin(model_id)
        return True

    async def _unpin(self, model_id: str) -> bool:
        for cache in self._caches_holding(model_id):
            cache.unpin(model_id)
        return True

    async def _unload(self, model_id: str) -> bool:
        results = [await cache.unload(model_id) for cache in list(self._caches)]
        return any(results)

    async def _artifacts(self) -> Any:
        from .._storage.node import node_artifacts

        return await asyncio.to_thread(node_artifacts)

    async def _configure(self, max_models: Any, max_bytes: Any) -> bool:
        self.configure(CacheLimits(max_models, max_bytes))
        return True

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
            await loader.warm(self._instance, model_id)
        return True

    def configure(self, limits: CacheLimits) -> None:
        """Resize every cache now, and those created later (see ``apply_limits``)."""
        self.limits = limits
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

    def _loaders(self) -> list[Loader]:
        cls = type(self._instance)
        return [getattr(getattr(cls, name), LOADER_ATTR) for name in self._loader_names]

    def _loader_caches(self) -> list[ModelCache]:
        """The cache of each multiplexed loader of the deployment, created if need be."""
        return [loader.cache_for(self._instance) for loader in self._loaders()]
