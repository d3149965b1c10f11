"""The controller's end of its channels: what each peer that dials it says first decides
what it is (a replica starting, a router reporting load, a watcher of replica sets or routes).

A replica keeps its channel open while it runs: ``StopReplica``, ``Ping`` and the requests of
``rpc.py`` go out on it, and their answers come back on it.
"""

from __future__ import annotations

from typing import Callable

from .._data.channel import Channel, ConnectionClosed
from .._messages import (
    DeploymentID,
    ModelEvents,
    Pong,
    Preloaded,
    Reconfigured,
    ReplicaReady,
    ReplicaStartFailed,
    ReplicaStopped,
    RouterReport,
    WatchReplicas,
    WatchRoutes,
)
from .health import HealthChecker
from .publisher import Publisher
from .replicas import ReplicaRunner
from .rpc import Requests
from .waits import Background

__all__ = ["ControlChannel"]


class ControlChannel:
    def __init__(
        self,
        runner: ReplicaRunner,
        health: HealthChecker,
        requests: Requests,
        publisher: Publisher,
        *,
        report: Callable[[RouterReport], None],
        models: Callable[[DeploymentID, ModelEvents], None] = lambda d, m: None,
        background: Background,
    ) -> None:
        self._runner = runner
        self._health = health
        self._requests = requests
        self._publisher = publisher
        self._report = report
        self._models = models
        self._background = background

    async def accept(self, conn: Channel) -> None:
        """Serve one peer: a replica's control channel, or a watcher of replica sets or routes."""
        try:
            message = await conn.recv()
            if isinstance(message, (ReplicaReady, ReplicaStartFailed)):
                await self._replica(conn, message)
            elif isinstance(message, RouterReport):
                while isinstance(message, RouterReport):
                    self._report(message)
                    message = await conn.recv()
            elif isinstance(message, WatchReplicas):
                while True:
                    conn.send_nowait(
                        await self._publisher.watch(message.deployment_id, message.known_version)
                    )
                    message = await conn.recv()
                    if not isinstance(message, WatchReplicas):
                        return
            elif isinstance(message, WatchRoutes):
                # A watcher asking with version v has applied v: that is its acknowledgement.
                try:
                    while True:
                        await self._publisher.route_watcher_at(conn, message.known_version)
                        conn.send_nowait(await self._publisher.watch_routes(message.known_version))
                        message = await conn.recv()
                        if not isinstance(message, WatchRoutes):
                            return
                finally:
                    await self._publisher.route_watcher_at(conn, None)
        except ConnectionClosed:
            return

    async def _replica(self, conn: Channel, first: ReplicaReady | ReplicaStartFailed) -> None:
        found = self._runner.starting(first.replica_id)
        if found is None:
            return
        deployment, replica = found
        if isinstance(first, ReplicaStartFailed):
            replica.error = f"{first.error}\n{first.traceback}".rstrip()
            return  # the replica exits; its end counts the failure
        if not self._runner.ready(deployment, replica, first, conn):
            return
        self._health.start(deployment, replica)
        if self._requests.needs_catch_up(deployment, replica):
            self._background.spawn(self._requests.catch_up(deployment, replica))
        while True:
            message = await conn.recv()
            if isinstance(message, Pong):
                replica.last_pong = message
                replica.pong.set()
            elif isinstance(message, (Preloaded, Reconfigured)):
                future = replica.replies.get(message.seq)
                if future is not None and not future.done():
                    future.set_result(message)
            elif isinstance(message, ModelEvents):
                self._models(deployment.id, message)
            elif isinstance(message, ReplicaStopped):
                return
