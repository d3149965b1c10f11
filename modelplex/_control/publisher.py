"""Replica sets and routes, published under version numbers that watchers long-poll.

A router asks ``watch`` with the version it has and gets an answer once there is a newer one
(or after a while, which also tells a dead watcher from a quiet one). A route table counts as
applied by a remote proxy when the proxy asks with its version: a deploy waits for that
acknowledgement, so ``serve.run`` never returns before a proxy can route to the app.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from .._messages import DeploymentID, ReplicaInfo, ReplicaSet, RouteTable
from .reconcile import Phase
from .state import Deployment
from .targets import Targets
from .waits import Sleep, wait_for

__all__ = ["Publisher"]

logger = logging.getLogger("modelplex.controller")

_WATCH_TIMEOUT_S = 30.0
_ROUTES_ACK_TIMEOUT_S = 5.0


class Publisher:
    def __init__(self, targets: Targets, *, sleep: Sleep) -> None:
        self._targets = targets
        self._sleep = sleep
        self._versions: dict[DeploymentID, int] = {}
        self._changed = asyncio.Condition()
        self._routes_version = 0
        self._route_watchers: dict[int, int] = {}  # id(connection) -> route version it has
        self._closed = False

    def close(self) -> None:
        """Long polls return at once from now on."""
        self._closed = True

    # ---- replica sets ------------------------------------------------------------------------

    def replica_set(self, deployment_id: DeploymentID) -> ReplicaSet:
        deployment = self._targets.deployments.get(deployment_id)
        version = self._versions.get(deployment_id, 0)
        if deployment is None or deployment.removed:
            return ReplicaSet(deployment_id, version, (), exists=False)
        config = deployment.spec.config
        return ReplicaSet(
            deployment_id,
            version,
            _published(deployment),
            config.max_queued_requests,
            max_replicas_per_model=config.max_replicas_per_model,
            tenants=config.tenants,
            loads_models=bool(deployment.spec.interface.loaders),
        )

    async def watch(self, deployment_id: DeploymentID, known_version: int) -> ReplicaSet:
        """Return the replica set once its version differs from ``known_version``."""
        await self._long_poll(lambda: self._versions.get(deployment_id, 0) != known_version)
        return self.replica_set(deployment_id)

    async def publish(self, deployment: Deployment) -> None:
        """Bump the deployment's version if what routers should see changed."""
        published = (deployment.removed, deployment.spec.config, _published(deployment))
        if published == deployment.published:
            return
        deployment.published = published
        async with self._changed:
            self._versions[deployment.id] = self._versions.get(deployment.id, 0) + 1
            self._changed.notify_all()

    # ---- routes ------------------------------------------------------------------------------

    async def watch_routes(self, known_version: int) -> RouteTable:
        """Return the route table once its version differs from ``known_version``."""
        await self._long_poll(lambda: self._routes_version != known_version)
        return RouteTable(self._routes_version, self._targets.routes())

    async def routes_changed(self) -> None:
        """Publish a new route table, and return once every remote proxy has it (or after a
        short grace)."""
        async with self._changed:
            self._routes_version += 1
            version = self._routes_version
            self._changed.notify_all()
            try:
                await wait_for(
                    self._changed.wait_for(
                        lambda: all(v >= version for v in self._route_watchers.values())
                        or self._closed
                    ),
                    _ROUTES_ACK_TIMEOUT_S, self._sleep,
                )
            except asyncio.TimeoutError:
                logger.warning("A proxy has not acknowledged the new routes within %.0fs.", _ROUTES_ACK_TIMEOUT_S)

    async def route_watcher_at(self, watcher: object, version: int | None) -> None:
        """A route watcher has applied ``version`` (None: it went away)."""
        async with self._changed:
            if version is None:
                self._route_watchers.pop(id(watcher), None)
            else:
                self._route_watchers[id(watcher)] = version
            self._changed.notify_all()

    async def _long_poll(self, changed: Callable[[], bool]) -> None:
        """Return once ``changed()`` holds, the controller closes, or the poll times out (the
        watcher then asks again)."""
        async with self._changed:
            try:
                await wait_for(
                    self._changed.wait_for(lambda: changed() or self._closed),
                    _WATCH_TIMEOUT_S, self._sleep,
                )
            except asyncio.TimeoutError:
                pass


def _published(deployment: Deployment) -> tuple[ReplicaInfo, ...]:
    return tuple(
        ReplicaInfo(r.replica_id, r.address, r.spec.config.max_ongoing_requests)
        for r in deployment.replicas.values()
        if r.phase is Phase.RUNNING and r.address is not None
    )
