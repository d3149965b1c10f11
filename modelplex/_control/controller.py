"""The controller: which applications exist, and which replicas serve each deployment.

It lives in the process that called ``serve.run``, on the driver loop. Each deployment has a
*target* (its spec, a replica count and a code version); one loop compares every target with
the replicas it observes and applies what ``reconcile.reconcile`` decides: start, stop, give up
on a version and roll back. Events (a replica ready, a replica gone, a health check missed) only
record what happened and wake the loop, which also runs on a timer. Replica sets are published
under a version number (routers long-poll ``watch``); a redeploy is a rollout: new replicas
start before old ones stop.

This class is the facade the runtime, management, status and the deployer call; the work is
done by its parts, one module each: ``targets`` (applications and targets), ``replicas``
(replica processes), ``health``, ``publisher`` (replica sets and routes), ``channel`` and
``rpc`` (the control channel), ``loop`` (reconciling) and ``autoscaling``. Every wait with a
time limit runs on the injected ``clock`` and ``sleep``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from .._config import MetricsOptions
from .._data.channel import Channel
from .._data.transport import Server, start_server
from .._errors import ShuttingDownError
from .._events import NO_CONTROLLER_EVENTS, ControllerEvents
from .._messages import DeploymentID, ReplicaSet, RouterReport, RouteTable
from .._specs import DeploymentSpec
from .._types import CacheLimits
from .autoscale.apply import Autoscaling
from .backends import Backend
from .channel import ControlChannel
from .health import HealthChecker
from .loop import ReconcileLoop
from .publisher import Publisher
from .reconcile import Policy
from .replicas import ReplicaRunner
from .rpc import Requests
from .scheduling import Scheduler
from .state import App, Deployment, DeploymentObservation, ReplicaState
from .targets import Targets
from .waits import Background, Clock, Sleep

if TYPE_CHECKING:
    from .._storage.config import StorageConfig

__all__ = ["Controller", "DeploymentObservation", "ReplicaState"]


class Controller:
    def __init__(
        self,
        backend: Backend,
        *,
        secret: bytes,
        log_dir: str,
        policy: Policy | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        events: ControllerEvents | None = None,
        metrics: MetricsOptions | None = None,
        storage: StorageConfig | None = None,
    ) -> None:
        """``storage`` goes to every replica (None: each replica reads its environment)."""
        policy = policy or Policy()
        self._backend = backend
        self._secret = secret
        self._clock = clock
        self._server: Server | None = None
        self._address: tuple[str, int] | None = None
        self._deploy_lock = asyncio.Lock()
        self._deploys: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self._closed = False
        self._wake = asyncio.Event()
        self._background = Background()
        self._targets = Targets()
        # The node's ledger, when the backend places replicas on its node itself (local).
        self._scheduler = Scheduler(backend.inventory)
        self._publisher = Publisher(self._targets, sleep=sleep)
        self._requests = Requests(reconfigure_timeout_s=policy.start_timeout_s, sleep=sleep)
        self._runner = ReplicaRunner(
            backend, self._targets, address=lambda: self.address, secret=secret,
            log_dir=log_dir, metrics=metrics, storage=storage, background=self._background,
            wake=self._wake.set, clock=clock, sleep=sleep, release=self._scheduler.release,
        )
        self._health = HealthChecker(
            self._runner, self._publisher, background=self._background, wake=self._wake.set,
            clock=clock, sleep=sleep,
        )
        self._autoscaling = Autoscaling(
            self._targets, self._runner, self._publisher, self._requests, wake=self._wake.set,
            clock=clock,
        )
        self._channel = ControlChannel(
            self._runner, self._health, self._requests, self._publisher,
            report=self._autoscaling.report, models=self._autoscaling.models,
            background=self._background,
        )
        self._loop = ReconcileLoop(
            self._targets, self._runner, self._publisher, self._autoscaling, self._scheduler,
            policy=policy,
            events=events if events is not None else NO_CONTROLLER_EVENTS, wake=self._wake,
            background=self._background, clock=clock, sleep=sleep,
        )

    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("controller not started")
        return self._address

    async def start(self, host: str = "127.0.0.1", *, listen: bool = True) -> None:
        """Listen on ``host``: loopback alone unless a backend places replicas on other hosts.

        With ``listen=False`` (tests on the in-process backend) replicas reach ``accept``
        through another transport, and the address is only a name."""
        if listen:
            self._server = await start_server(self.accept, secret=self._secret, host=host)
            self._address = self._server.address
        else:
            self._address = (host, 0)
        self._loop_task = asyncio.get_running_loop().create_task(self._loop.run())

    # ---- applications ------------------------------------------------------------------------

    def routes(self) -> dict[str, tuple[str, DeploymentID]]:
        """route prefix -> (app name, ingress deployment)."""
        return self._targets.routes()

    def app_names(self) -> list[str]:
        return list(self._targets.apps)

    def deployed_at(self, app_name: str) -> float:
        """When application ``app_name``'s last deploy began (Unix time)."""
        return self._targets.app(app_name).deployed_at

    def deployments(self, app_name: str) -> tuple[DeploymentID, list[DeploymentID]]:
        """(ingress, every deployment) of application ``app_name``."""
        app = self._targets.app(app_name)
        return app.ingress, list(app.deployments)

    def set_cache_limits(self, deployment_id: DeploymentID, limits: CacheLimits) -> None:
        """Remembered so replicas started later (replacements) get them too."""
        self._targets.set_cache_limits(deployment_id, limits)

    async def set_model_weights(self, deployment_id: DeploymentID, weights: dict[str, float]) -> None:
        """New ``model_weights`` in place: every router has them with its next replica set."""
        async with self._deploy_lock:
            await self._publisher.publish(self._targets.set_model_weights(deployment_id, weights))

    def access_log(self, deployment_id: DeploymentID) -> bool:
        """Whether the deployment's ``logging_config`` keeps its access lines (the proxy asks)."""
        return self._targets.access_log(deployment_id)

    async def deploy(
        self,
        name: str,
        route_prefix: str,
        specs: list[DeploymentSpec],
        ingress: str,
        *,
        in_place: bool = False,
    ) -> None:
        """Deploy (or redeploy) application ``name`` and return once it meets its target.

        Every deploy rolls out new replicas, unless ``in_place``: then a deployment whose code
        and replica options did not change keeps its replicas and only takes the new counts
        and limits (as a config-file deploy does)."""
        if self._closed:
            raise ShuttingDownError()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("deploy must run in a task")
        self._deploys.add(task)  # shutdown cancels a deploy still waiting for its replicas
        try:
            await self._deploy(name, route_prefix, specs, ingress, in_place)
        finally:
            self._deploys.discard(task)

    async def _deploy(
        self, name: str, route_prefix: str, specs: list[DeploymentSpec], ingress: str,
        in_place: bool,
    ) -> None:
        deployed_at = time.time()  # a record for serve.status, never a decision's input
        async with self._deploy_lock:
            self._targets.check_prefix(name, route_prefix)
            self._scheduler.check(specs)  # what could never start fails now, changing nothing
            targets = [
                self._targets.set_target(DeploymentID(name, spec.config.name), spec, in_place)
                for spec in specs
            ]
            changed = [deployment for deployment, _ in targets]
            kept = {deployment.id: old for deployment, old in targets if old is not None}
            try:
                for deployment, old in targets:
                    if old is not None and old.config.user_config != deployment.spec.config.user_config:
                        await self._requests.reconfigure(deployment, old)
                await self._settle(changed)
            except BaseException:
                for deployment in changed:
                    if deployment.id in kept:  # updated in place: back to the spec it had
                        deployment.spec = kept[deployment.id]
                    else:
                        self._targets.roll_back(deployment)
                self._wake.set()
                raise
            old_app = self._targets.apps.get(name)
            ids = [d.id for d in changed]
            self._targets.apps[name] = App(
                name, route_prefix, DeploymentID(name, ingress), ids, deployed_at
            )
            await self._publisher.routes_changed()
            if old_app is not None:
                await self._remove([d for d in old_app.deployments if d not in ids])

    async def _settle(self, deployments: list[Deployment]) -> None:
        """Wake the loop and wait until each deployment meets its target, or fails."""
        loop = asyncio.get_running_loop()
        waits = []
        for deployment in deployments:
            future = loop.create_future()
            deployment.waiters.append(future)
            waits.append(future)
        self._wake.set()
        try:
            await asyncio.gather(*waits)
        finally:
            for future in waits:
                future.cancel()  # no-op once done; frees the others if one failed

    async def _remove(self, deployment_ids: list[DeploymentID]) -> None:
        gone = self._targets.remove(deployment_ids)
        if gone:
            await self._settle(gone)

    async def delete(self, name: str) -> None:
        async with self._deploy_lock:
            app = self._targets.apps.pop(name, None)
            if app is None:
                return
            await self._publisher.routes_changed()
            await self._remove(app.deployments)

    async def shutdown(self) -> None:
        deploys = list(self._deploys)
        for task in deploys:
            task.cancel()
        await asyncio.gather(*deploys, return_exceptions=True)
        for name in list(self._targets.apps):
            await self.delete(name)
        await self._remove(list(self._targets.deployments))  # what a cancelled deploy left
        self._closed = True
        self._publisher.close()
        self._runner.close()
        self._loop.close()
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        await self._background.cancel()
        if self._server is not None:
            await self._server.close()
        await self._backend.close()

    # ---- replica sets, routes, load ----------------------------------------------------------

    def replica_set(self, deployment_id: DeploymentID) -> ReplicaSet:
        return self._publisher.replica_set(deployment_id)

    async def watch(self, deployment_id: DeploymentID, known_version: int) -> ReplicaSet:
        """Return the replica set once its version differs from ``known_version``."""
        return await self._publisher.watch(deployment_id, known_version)

    async def watch_routes(self, known_version: int) -> RouteTable:
        """Return the route table once its version differs from ``known_version``."""
        return await self._publisher.watch_routes(known_version)

    def report(self, report: RouterReport) -> None:
        """A router's load and demand (the autoscaler's input)."""
        self._autoscaling.report(report)

    def model_events(self, after: int = 0, last: int | None = None) -> tuple[int, list[dict]]:
        """The replicas' loads and unloads numbered after ``after``, for the live page."""
        return self._autoscaling.figures.timeline(after, last)

    async def accept(self, conn: Channel) -> None:
        """Serve one peer: a replica's control channel, or a watcher of replica sets or routes."""
        await self._channel.accept(conn)

    def resources(self) -> dict[str, dict[str, float]]:
        """The node's ``total`` and ``available`` resources; {} when the backend places."""
        return self._scheduler.resources()

    def observe(self, deployment_id: DeploymentID) -> DeploymentObservation | None:
        """What ``serve.status`` shows of a deployment that the controller knows itself."""
        deployment = self._targets.deployments.get(deployment_id)
        if deployment is None:
            return None
        replicas = tuple(
            ReplicaState(
                r.replica_id, r.phase.value, r.pid or (r.process.pid if r.process else None),
                r.waiting_for, r.placement.gpu_ids if r.placement else (),
            )
            for r in sorted(deployment.replicas.values(), key=lambda r: r.replica_id)
        )
        settled = deployment.settled()
        return DeploymentObservation(
            deployment.target().num_replicas,
            settled,
            replicas,
            self._autoscaling.stats(deployment_id, self._clock()),
            "" if settled else deployment.last_error[0],
        )
