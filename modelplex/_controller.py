"""The controller: which applications exist, and which replicas serve each deployment.

It lives in the process that called ``serve.run``, on the driver loop. It starts replicas
through a backend, learns they are ready when they dial in, publishes each deployment's replica
set under a version number (routers long-poll ``watch``), replaces replicas that die, and on
redeploy starts the new replicas before it drains and stops the old ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import string
import sys
from dataclasses import dataclass, field
from typing import Callable

from ._backends import Backend, ReplicaProcess, ReplicaSpec
from ._config import DeploymentConfig
from ._errors import ApplicationNotFoundError, DeploymentFailedError, ShuttingDownError
from ._messages import (
    DeploymentID,
    Ping,
    Pong,
    ReplicaInfo,
    ReplicaReady,
    ReplicaSet,
    ReplicaStartFailed,
    ReplicaStopped,
    StopReplica,
    WatchReplicas,
    WatchRoutes,
    RouteTable,
)
from ._transport import Connection, ConnectionClosed, Server, start_server

logger = logging.getLogger("modelplex.controller")

_WATCH_TIMEOUT_S = 30.0
_RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_START_TIMEOUT_S = 300.0
_START_WARN_S = 30.0
_ROUTES_ACK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment of an application, as ``serve.run`` hands it over."""

    config: DeploymentConfig
    payload: bytes  # cloudpickled (class, args, kwargs)


@dataclass
class _Replica:
    replica_id: str
    process: ReplicaProcess
    ready: asyncio.Future
    address: tuple[str, int] | None = None
    control: Connection | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False
    pong: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Deployment:
    id: DeploymentID
    spec: DeploymentSpec
    replicas: dict[str, _Replica] = field(default_factory=dict)
    live: bool = True
    failures: int = 0


@dataclass
class _App:
    name: str
    route_prefix: str
    ingress: DeploymentID
    deployments: dict[str, _Deployment]


class Controller:
    def __init__(self, backend: Backend, *, secret: bytes, log_dir: str) -> None:
        self._backend = backend
        self._secret = secret
        self._log_dir = log_dir
        self._apps: dict[str, _App] = {}
        self._published: dict[DeploymentID, _Deployment] = {}
        self._versions: dict[DeploymentID, int] = {}
        self._changed = asyncio.Condition()
        self._starting: dict[str, _Replica] = {}
        self._server: Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._deploy_lock = asyncio.Lock()
        self._cache_limits: dict[DeploymentID, tuple] = {}
        self._routes_version = 0
        self._deploys: set[asyncio.Task] = set()
        self._route_watchers: dict[int, int] = {}  # id(connection) -> route version it has
        self._closed = False

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("controller not started")
        return self._server.address

    async def start(self, host: str = "127.0.0.1") -> None:
        """Listen on ``host``: loopback alone unless a backend places replicas on other hosts."""
        self._server = await start_server(self._on_connection, secret=self._secret, host=host)

    # ---- applications ------------------------------------------------------------------------

    def routes(self) -> dict[str, tuple[str, DeploymentID]]:
        """route prefix -> (app name, ingress deployment)."""
        return {app.route_prefix: (app.name, app.ingress) for app in self._apps.values()}

    async def watch_routes(self, known_version: int) -> RouteTable:
        """Return the route table once its version differs from ``known_version``."""
        await self._long_poll(lambda: self._routes_version != known_version)
        return RouteTable(self._routes_version, self.routes())

    async def _routes_changed(self) -> None:
        """Publish a new route table, and return once every remote proxy has it (or after a
        short grace), so that ``serve.run`` never returns before a proxy can route to the app."""
        async with self._changed:
            self._routes_version += 1
            version = self._routes_version
            self._changed.notify_all()
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(
                        lambda: all(v >= version for v in self._route_watchers.values())
                        or self._closed
                    ),
                    _ROUTES_ACK_TIMEOUT_S,
                )
            except asyncio.TimeoutError:
                logger.warning("A proxy has not acknowledged the new routes within %.0fs.", _ROUTES_ACK_TIMEOUT_S)

    def app_names(self) -> list[str]:
        return list(self._apps)

    def set_cache_limits(self, deployment_id: DeploymentID, limits: tuple) -> None:
        """Remembered so replicas started later (replacements) get them too."""
        self._cache_limits[deployment_id] = limits

    def deployments(self, app_name: str) -> tuple[DeploymentID, list[DeploymentID]]:
        """(ingress, every deployment) of application ``app_name``."""
        app = self._apps.get(app_name)
        if app is None:
            raise ApplicationNotFoundError(app_name)
        return app.ingress, [d.id for d in app.deployments.values()]

    async def deploy(
        self, name: str, route_prefix: str, specs: list[DeploymentSpec], ingress: str
    ) -> None:
        if self._closed:
            raise ShuttingDownError()
        task = asyncio.current_task()
        assert task is not None
        self._deploys.add(task)  # shutdown cancels a deploy still waiting for its replicas
        try:
            await self._deploy(name, route_prefix, specs, ingress)
        finally:
            self._deploys.discard(task)

    async def _deploy(
        self, name: str, route_prefix: str, specs: list[DeploymentSpec], ingress: str
    ) -> None:
        async with self._deploy_lock:
            for other in self._apps.values():
                if other.name != name and other.route_prefix == route_prefix:
                    raise ValueError(
                        f"route_prefix {route_prefix!r} is already used by application "
                        f"{other.name!r}"
                    )
            new = {
                spec.config.name: _Deployment(DeploymentID(name, spec.config.name), spec)
                for spec in specs
            }
            for deployment in new.values():  # a redeploy starts from the code's own limits
                self._cache_limits.pop(deployment.id, None)
            try:
                await asyncio.gather(*(self._start_replicas(d) for d in new.values()))
            except BaseException:
                await asyncio.gather(
                    *(self._stop_deployment(d) for d in new.values()), return_exceptions=True
                )
                raise
            old = self._apps.get(name)
            self._apps[name] = _App(name, route_prefix, DeploymentID(name, ingress), new)
            for deployment in new.values():
                self._published[deployment.id] = deployment
            await self._notify(*(d.id for d in new.values()))
            await self._routes_changed()
            if old is not None:
                stale = [d for n, d in old.deployments.items() if n not in new]
                for d in stale:
                    self._published.pop(d.id, None)
                await self._notify(*(d.id for d in stale))
                await asyncio.gather(*(self._stop_deployment(d) for d in old.deployments.values()))

    async def delete(self, name: str) -> None:
        async with self._deploy_lock:
            app = self._apps.pop(name, None)
            if app is None:
                return
            for deployment in app.deployments.values():
                if self._published.get(deployment.id) is deployment:
                    del self._published[deployment.id]
            await self._notify(*(d.id for d in app.deployments.values()))
            await self._routes_changed()
            await asyncio.gather(*(self._stop_deployment(d) for d in app.deployments.values()))

    async def shutdown(self) -> None:
        deploys = list(self._deploys)
        for task in deploys:
            task.cancel()
        await asyncio.gather(*deploys, return_exceptions=True)
        for name in list(self._apps):
            await self.delete(name)
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.close()
        await self._backend.close()

    # ---- replica sets ------------------------------------------------------------------------

    def replica_set(self, deployment_id: DeploymentID) -> ReplicaSet:
        deployment = self._published.get(deployment_id)
        version = self._versions.get(deployment_id, 0)
        if deployment is None:
            return ReplicaSet(deployment_id, version, (), exists=False)
        config = deployment.spec.config
        replicas = tuple(
            ReplicaInfo(r.replica_id, r.address, config.max_ongoing_requests)
            for r in deployment.replicas.values()
            if r.address is not None and not r.stopping
        )
        return ReplicaSet(
            deployment_id,
            version,
            replicas,
            config.max_queued_requests,
            max_replicas_per_model=config.max_replicas_per_model,
        )

    async def watch(self, deployment_id: DeploymentID, known_version: int) -> ReplicaSet:
        """Return the replica set once its version differs from ``known_version``."""
        await self._long_poll(lambda: self._versions.get(deployment_id, 0) != known_version)
        return self.replica_set(deployment_id)

    async def _long_poll(self, changed: Callable[[], bool]) -> None:
        """Return once ``changed()`` holds, the controller closes, or the poll times out (the
        watcher then asks again, which also tells a dead watcher from a quiet one)."""
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: changed() or self._closed), _WATCH_TIMEOUT_S
                )
            except asyncio.TimeoutError:
                pass

    async def _notify(self, *deployment_ids: DeploymentID) -> None:
        async with self._changed:
            for deployment_id in deployment_ids:
                self._versions[deployment_id] = self._versions.get(deployment_id, 0) + 1
            self._changed.notify_all()

    # ---- replicas ----------------------------------------------------------------------------

    async def _start_replicas(self, deployment: _Deployment) -> None:
        count = deployment.spec.config.num_replicas
        await asyncio.gather(*(self._start_replica(deployment) for _ in range(count)))

    async def _start_replica(self, deployment: _Deployment) -> _Replica:
        replica_id = f"{deployment.id}#{''.join(random.choices(string.ascii_letters, k=6))}"
        config = deployment.spec.config
        spec = ReplicaSpec(
            replica_id=replica_id,
            deployment_id=deployment.id,
            payload=deployment.spec.payload,
            max_ongoing=config.max_ongoing_requests,
            controller_address=self.address,
            secret=self._secret,
            log_dir=self._log_dir,
            sys_path=tuple(p for p in sys.path if p),
            cwd=os.getcwd(),
            ray_actor_options=config.ray_actor_options,
            cache_limits=self._cache_limits.get(deployment.id),
        )
        loop = asyncio.get_running_loop()
        process = await self._backend.start(spec)
        replica = _Replica(replica_id, process, loop.create_future())
        self._starting[replica_id] = replica
        deployment.replicas[replica_id] = replica
        self._spawn(self._monitor(deployment, replica))
        try:
            await self._wait_started(replica, config)
        except BaseException:
            deployment.replicas.pop(replica_id, None)
            replica.stopping = True
            process.kill()
            raise
        finally:
            self._starting.pop(replica_id, None)
        deployment.failures = 0
        self._spawn(self._health_check(deployment, replica))
        return replica

    async def _wait_started(self, replica: _Replica, config: DeploymentConfig) -> None:
        """Wait for ReplicaReady, saying so every little while: a replica that no node has
        room for waits in the backend's queue, and the user should hear why."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            remaining = started + _START_TIMEOUT_S - loop.time()
            try:
                await asyncio.wait_for(asyncio.shield(replica.ready), min(_START_WARN_S, remaining))
                return
            except asyncio.TimeoutError:
                if remaining <= _START_WARN_S:
                    raise DeploymentFailedError(
                        config.name, f"replica {replica.replica_id} did not start within "
                        f"{_START_TIMEOUT_S:.0f}s"
                    ) from None
                waiting = loop.time() - started
                where = (
                    f"; no node may have the resources it asks for ({dict(config.ray_actor_options)})"
                    if config.ray_actor_options else ""
                )
                logger.warning(
                    "Replica %s has not started after %.0fs%s.", replica.replica_id, waiting, where
                )

    async def _monitor(self, deployment: _Deployment, replica: _Replica) -> None:
        code = await replica.process.wait()
        replica.stopped.set()
        if not replica.ready.done():
            replica.ready.set_exception(
                DeploymentFailedError(
                    deployment.id.name, f"replica {replica.replica_id} {_how_it_ended(replica.process, code)}"
                )
            )
            replica.ready.exception()  # mark retrieved
        if replica.stopping or self._closed:
            return
        logger.warning(
            "Replica %s %s; replacing it.", replica.replica_id, _how_it_ended(replica.process, code)
        )
        deployment.replicas.pop(replica.replica_id, None)
        await self._notify(deployment.id)
        if deployment.live and self._published.get(deployment.id) is deployment:
            self._spawn(self._replace(deployment))

    async def _replace(self, deployment: _Deployment) -> None:
        while deployment.live and not self._closed:
            try:
                await self._start_replica(deployment)
                await self._notify(deployment.id)
                return
            except Exception as exc:
                deployment.failures += 1
                delay = _RESTART_BACKOFF_S[min(deployment.failures, len(_RESTART_BACKOFF_S)) - 1]
                logger.error(
                    "Replacing a replica of %s failed (%s); retrying in %.1fs.",
                    deployment.id, exc, delay,
                )
                await asyncio.sleep(delay)

    async def _stop_deployment(self, deployment: _Deployment) -> None:
        deployment.live = False
        await asyncio.gather(
            *(self._stop_replica(deployment, r) for r in list(deployment.replicas.values()))
        )

    async def _stop_replica(self, deployment: _Deployment, replica: _Replica) -> None:
        replica.stopping = True
        timeout = deployment.spec.config.graceful_shutdown_timeout_s
        if replica.control is not None and not replica.control.closed:
            try:
                await replica.control.send(StopReplica(timeout))
                await asyncio.wait_for(replica.stopped.wait(), timeout + 10.0)
            except (ConnectionClosed, asyncio.TimeoutError, OSError):
                pass
        replica.process.kill()
        await replica.stopped.wait()
        deployment.replicas.pop(replica.replica_id, None)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- the control channel -----------------------------------------------------------------

    async def _on_connection(self, conn: Connection) -> None:
        try:
            message = await conn.recv()
            if isinstance(message, (ReplicaReady, ReplicaStartFailed)):
                await self._replica_channel(conn, message)
            elif isinstance(message, WatchReplicas):
                while True:
                    await conn.send(await self.watch(message.deployment_id, message.known_version))
                    message = await conn.recv()
                    if not isinstance(message, WatchReplicas):
                        return
            elif isinstance(message, WatchRoutes):
                # A watcher asking with version v has applied v: that is its acknowledgement.
                try:
                    while True:
                        await self._route_watcher_at(conn, message.known_version)
                        await conn.send(await self.watch_routes(message.known_version))
                        message = await conn.recv()
                        if not isinstance(message, WatchRoutes):
                            return
                finally:
                    await self._route_watcher_at(conn, None)
        except ConnectionClosed:
            return

    async def _replica_channel(self, conn: Connection, first: object) -> None:
        replica = self._starting.get(getattr(first, "replica_id", ""))
        if replica is None:
            return
        if isinstance(first, ReplicaStartFailed):
            if not replica.ready.done():
                name = replica.replica_id.split("#")[0]
                replica.ready.set_exception(
                    DeploymentFailedError(name, first.error, first.traceback)
                )
            return
        assert isinstance(first, ReplicaReady)
        replica.address = first.address
        replica.control = conn
        if not replica.ready.done():
            replica.ready.set_result(None)
        # Keep the channel open: StopReplica and Ping go out on it; answers come back.
        while True:
            message = await conn.recv()
            if isinstance(message, Pong):
                replica.pong.set()
            elif isinstance(message, ReplicaStopped):
                return

    async def _route_watcher_at(self, conn: Connection, version: int | None) -> None:
        async with self._changed:
            if version is None:
                self._route_watchers.pop(id(conn), None)
            else:
                self._route_watchers[id(conn)] = version
            self._changed.notify_all()

    async def _health_check(self, deployment: _Deployment, replica: _Replica) -> None:
        """Ping the replica's control loop; one that stops answering is killed and replaced.

        User code runs on another loop, so a slow model load never fails this check; only a
        wedged process (stopped, deadlocked, a C call holding the GIL) does."""
        config = deployment.spec.config
        seq = 0
        while not replica.stopping and not replica.stopped.is_set():
            await asyncio.sleep(config.health_check_period_s)
            if replica.stopping or replica.control is None or replica.control.closed:
                return
            seq += 1
            replica.pong.clear()
            try:
                replica.control.send_nowait(Ping(seq))
                await asyncio.wait_for(replica.pong.wait(), config.health_check_timeout_s)
            except asyncio.TimeoutError:
                if replica.stopping:
                    return
                logger.error(
                    "Replica %s did not answer a health check within %.1fs; killing it.",
                    replica.replica_id, config.health_check_timeout_s,
                )
                replica.process.kill()
                return
            except (ConnectionClosed, OSError):
                return


def _how_it_ended(process: ReplicaProcess, code: int | None) -> str:
    """"exited with code 1", "was killed by SIGKILL", or the backend's own account."""
    reason = getattr(process, "exit_reason", None)
    if reason:
        return reason
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exited with code {code}"
