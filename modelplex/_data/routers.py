"""Routing requests to replicas: the router of each deployment, and the routers of a process.

``router.Router`` composes the parts (``placement``, ``registry``, ``pool``, ``demand``) around
the pure policy in ``routing``; see each module. ``RouterRegistry`` holds one router per deployment
for everything in this process that sends requests: the proxy and deployment handles.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Callable

from .._events import NO_ROUTER_EVENTS, RouterEvents
from .._messages import DeploymentID
from .transport import connect
from .pool import CONNECT_TIMEOUT_S, Dialer, NotSent, RunningReplica
from .router import ReplicaDirectory, Router

__all__ = [
    "Dialer",
    "NotSent",
    "ReplicaDirectory",
    "Router",
    "RouterRegistry",
    "RunningReplica",
    "current_registry",
    "install_registry",
    "tcp_dialer",
]


def tcp_dialer(secret: bytes) -> Dialer:
    """Dial replicas over modelplex's authenticated TCP channel."""
    return functools.partial(connect, secret=secret, timeout_s=CONNECT_TIMEOUT_S)


class RouterRegistry:
    """The routers of one process, all living on one event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        directory: ReplicaDirectory,
        secret: bytes,
        *,
        events: Callable[[DeploymentID], RouterEvents] | None = None,
    ) -> None:
        self.loop = loop
        # Each new router's events (metrics), by deployment; none by default.
        self._events = events or (lambda _: NO_ROUTER_EVENTS)
        self._directory = directory
        self._dial = tcp_dialer(secret)
        self._routers: dict[DeploymentID, Router] = {}
        self._lock = threading.Lock()  # handles ask from any thread

    def router(self, deployment_id: DeploymentID) -> Router:
        with self._lock:
            router = self._routers.get(deployment_id)
            if router is None:
                router = Router(
                    deployment_id, self._directory, self._dial,
                    events=self._events(deployment_id),
                )
                self._routers[deployment_id] = router
            return router

    def routers(self) -> list[Router]:
        with self._lock:
            return list(self._routers.values())

    async def close(self) -> None:
        with self._lock:
            routers, self._routers = list(self._routers.values()), {}
        for router in routers:
            await router.close()


_registry: RouterRegistry | None = None


def install_registry(registry: RouterRegistry | None) -> None:
    global _registry
    _registry = registry


def current_registry() -> RouterRegistry | None:
    return _registry
