"""The controller: which applications exist, and which replicas serve each deployment.

It lives in the process that called ``serve.run``, on the driver loop. Each deployment has a
*target* (its spec, a replica count and a code version); one loop compares every target with
the replicas it observes and applies what ``_reconcile.reconcile`` decides: start, stop, give up
on a version and roll back. Events (a replica ready, a replica gone, a health check missed) only
record what happened and wake the loop, which also runs on a timer. Replica sets are published
under a version number (routers long-poll ``watch``); a redeploy is a rollout: new replicas
start before old ones stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import string
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from ._backends import Backend, ReplicaProcess
from ._config import DeploymentConfig, LoggingConfig, MetricsOptions
from ._errors import ApplicationNotFoundError, DeploymentFailedError, ShuttingDownError
from ._events import NO_CONTROLLER_EVENTS, ControllerEvents
from ._messages import (
    DeploymentID,
    Ping,
    Pong,
    Preload,
    Preloaded,
    Reconfigure,
    Reconfigured,
    ReplicaInfo,
    ReplicaReady,
    ReplicaSet,
    ReplicaStartFailed,
    ReplicaStopped,
    RouterReport,
    RouteTable,
    StopReplica,
    WatchReplicas,
    WatchRoutes,
)
from ._reconcile import History, Phase, Policy, ReplicaObservation, Target, reconcile
from ._scaler import Scaler, Stats
from ._specs import ReplicaSpec
from ._transport import Channel, ConnectionClosed, Server, start_server

logger = logging.getLogger("modelplex.controller")

_WATCH_TIMEOUT_S = 30.0
_START_WARN_S = 30.0
_ROUTES_ACK_TIMEOUT_S = 5.0
_LOOP_PERIOD_S = 1.0  # the loop looks again at least this often, events or not
_AUTOSCALE_PERIOD_S = 0.5  # how often autoscaling deployments sample their load and decide
_HANDOFF_TIMEOUT_S = 30.0  # a scale-down waits at most this long for survivors to preload
_PONG_GRACE_S = 0.5  # beyond health_check_timeout_s, for the replica's answer to arrive
_UNHEALTHY_AFTER = 3  # failed check_health calls in a row, as Ray's threshold


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment of an application, as ``serve.run`` hands it over."""

    config: DeploymentConfig
    payload: bytes  # cloudpickled (class, args, kwargs)


@dataclass(frozen=True)
class ReplicaState:
    replica_id: str
    phase: str  # "starting", "running" or "stopping"
    pid: int | None


@dataclass(frozen=True)
class DeploymentObservation:
    target_replicas: int
    settled: bool
    replicas: tuple[ReplicaState, ...]
    stats: Stats


@dataclass
class _Replica:
    replica_id: str
    spec: DeploymentSpec
    code_version: int
    phase: Phase
    since: float
    process: ReplicaProcess | None = None
    address: tuple[str, int] | None = None
    control: Channel | None = None
    error: str = ""  # what the replica said when it could not start
    pid: int | None = None  # as the replica reported it when ready
    retiring: bool = False  # handing its hot models to the survivors before it stops
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    pong: asyncio.Event = field(default_factory=asyncio.Event)
    last_pong: Pong | None = None
    replies: dict[int, asyncio.Future] = field(default_factory=dict)  # Preload, Reconfigure by seq

    def observe(self) -> ReplicaObservation:
        return ReplicaObservation(self.replica_id, self.phase, self.code_version, self.since)


@dataclass
class _Deployment:
    id: DeploymentID
    spec: DeploymentSpec
    code_version: int = 1
    previous: tuple[DeploymentSpec, int] | None = None  # the last version that ran whole
    removed: bool = False  # target: no replicas, then forget the deployment
    replicas: dict[str, _Replica] = field(default_factory=dict)
    history: History = field(default_factory=History)
    last_error: tuple[str, str] = ("", "")  # (message, traceback) of the last failed start
    waiters: list[asyncio.Future] = field(default_factory=list)
    published: tuple = ()  # what the last published replica set held
    scaled_to: int | None = None  # the autoscaler's count, when the deployment autoscales
    handed: dict[str, int] = field(default_factory=dict)  # preloads per survivor, this scale-down

    def wanted(self) -> int:
        config = self.spec.config
        if config.autoscaling_config is None:
            return config.num_replicas
        if self.scaled_to is None:
            return config.initial_replicas
        scaling = config.autoscaling_config
        return min(max(self.scaled_to, scaling.min_replicas), scaling.max_replicas)

    def target(self) -> Target:
        return Target(0 if self.removed else self.wanted(), self.code_version)

    def settled(self) -> bool:
        """The target is met and no other replica is left, not even one stopping."""
        want = self.target().num_replicas
        return len(self.replicas) == want and all(
            r.phase is Phase.RUNNING and r.code_version == self.code_version
            for r in self.replicas.values()
        )


@dataclass
class _App:
    name: str
    route_prefix: str
    ingress: DeploymentID
    deployments: list[DeploymentID]


class Controller:
    def __init__(
        self,
        backend: Backend,
        *,
        secret: bytes,
        log_dir: str,
        policy: Policy | None = None,
        clock: Callable[[], float] = time.monotonic,
        events: ControllerEvents | None = None,
        metrics: MetricsOptions | None = None,
    ) -> None:
        self._backend = backend
        self._events = events if events is not None else NO_CONTROLLER_EVENTS
        self._metrics = metrics  # handed to replicas: metrics on, and where they go
        self._secret = secret
        self._log_dir = log_dir
        self._policy = policy or Policy()
        self._clock = clock
        self._apps: dict[str, _App] = {}
        self._deployments: dict[DeploymentID, _Deployment] = {}
        self._versions: dict[DeploymentID, int] = {}
        self._changed = asyncio.Condition()
        self._starting: dict[str, tuple[_Deployment, _Replica]] = {}
        self._server: Server | None = None
        self._address: tuple[str, int] | None = None
        self._tasks: set[asyncio.Task] = set()
        self._deploy_lock = asyncio.Lock()
        self._cache_limits: dict[DeploymentID, tuple] = {}
        self._routes_version = 0
        self._deploys: set[asyncio.Task] = set()
        self._route_watchers: dict[int, int] = {}  # id(connection) -> route version it has
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._scaler = Scaler()
        self._next_autoscale = 0.0
        self._preload_seq = 0
        self._closed = False

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
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

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
        return app.ingress, list(app.deployments)

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
        assert task is not None
        self._deploys.add(task)  # shutdown cancels a deploy still waiting for its replicas
        try:
            await self._deploy(name, route_prefix, specs, ingress, in_place)
        finally:
            self._deploys.discard(task)

    async def _deploy(
        self, name: str, route_prefix: str, specs: list[DeploymentSpec], ingress: str,
        in_place: bool,
    ) -> None:
        async with self._deploy_lock:
            for other in self._apps.values():
                if other.name != name and other.route_prefix == route_prefix:
                    raise ValueError(
                        f"route_prefix {route_prefix!r} is already used by application "
                        f"{other.name!r}"
                    )
            targets = [
                self._set_target(DeploymentID(name, spec.config.name), spec, in_place)
                for spec in specs
            ]
            changed = [deployment for deployment, _ in targets]
            kept = {deployment.id: old for deployment, old in targets if old is not None}
            try:
                for deployment, old in targets:
                    if old is not None and old.config.user_config != deployment.spec.config.user_config:
                        await self._reconfigure(deployment, old)
                await self._settle(changed)
            except BaseException:
                for deployment in changed:
                    if deployment.id in kept:  # updated in place: back to the spec it had
                        deployment.spec = kept[deployment.id]
                    else:
                        self._roll_back(deployment)
                self._wake.set()
                raise
            old = self._apps.get(name)
            ids = [d.id for d in changed]
            self._apps[name] = _App(name, route_prefix, DeploymentID(name, ingress), ids)
            await self._routes_changed()
            if old is not None:
                await self._remove([d for d in old.deployments if d not in ids])

    def _set_target(
        self, deployment_id: DeploymentID, spec: DeploymentSpec, in_place: bool = False
    ) -> tuple[_Deployment, DeploymentSpec | None]:
        """A new deployment, or a new code version of one (the loop rolls it out), or, in
        place, new counts, limits or ``user_config`` for the replicas it has. With the spec it
        replaced when in place (None otherwise).

        A change of ``user_config`` alone is in place even for ``serve.run`` (Ray starts new
        replicas): the replicas keep their loaded models."""
        deployment = self._deployments.get(deployment_id)
        if (
            deployment is not None
            and not deployment.removed
            and (
                (in_place and _same_replicas(deployment.spec, spec))
                or _only_user_config_changed(deployment.spec, spec)
            )
        ):
            old, deployment.spec = deployment.spec, spec
            if old.config.user_config == spec.config.user_config:
                for replica in deployment.replicas.values():
                    if replica.code_version == deployment.code_version:
                        replica.spec = spec
            return deployment, old
        self._cache_limits.pop(deployment_id, None)  # a redeploy starts from the code's limits
        if deployment is None:
            deployment = _Deployment(deployment_id, spec)
            self._deployments[deployment_id] = deployment
        else:
            if deployment.history.healthy_once and not deployment.removed:
                deployment.previous = (deployment.spec, deployment.code_version)
            deployment.spec = spec
            deployment.code_version += 1
            deployment.removed = False
            deployment.history = History()
        return deployment, None

    def _roll_back(self, deployment: _Deployment) -> None:
        """A deploy failed or was cancelled: go back to the version that ran, or away."""
        if deployment.previous is not None:
            deployment.spec, deployment.code_version = deployment.previous
            deployment.history = History(healthy_once=True)
        else:
            deployment.removed = True

    async def _settle(self, deployments: list[_Deployment]) -> None:
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
        gone = []
        for deployment_id in deployment_ids:
            deployment = self._deployments.get(deployment_id)
            if deployment is not None:
                deployment.removed = True
                gone.append(deployment)
        if gone:
            await self._settle(gone)

    async def delete(self, name: str) -> None:
        async with self._deploy_lock:
            app = self._apps.pop(name, None)
            if app is None:
                return
            await self._routes_changed()
            await self._remove(app.deployments)

    async def shutdown(self) -> None:
        deploys = list(self._deploys)
        for task in deploys:
            task.cancel()
        await asyncio.gather(*deploys, return_exceptions=True)
        for name in list(self._apps):
            await self.delete(name)
        await self._remove(list(self._deployments))  # what a cancelled deploy left
        self._closed = True
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.close()
        await self._backend.close()

    # ---- status ------------------------------------------------------------------------------

    def observe(self, deployment_id: DeploymentID) -> DeploymentObservation | None:
        """What ``serve.status`` shows of a deployment that the controller knows itself."""
        deployment = self._deployments.get(deployment_id)
        if deployment is None:
            return None
        replicas = tuple(
            ReplicaState(r.replica_id, r.phase.value, r.pid or (r.process.pid if r.process else None))
            for r in sorted(deployment.replicas.values(), key=lambda r: r.replica_id)
        )
        return DeploymentObservation(
            deployment.target().num_replicas,
            deployment.settled(),
            replicas,
            self._scaler.stats(deployment_id, self._clock()),
        )

    # ---- autoscaling -------------------------------------------------------------------------

    def report(self, report: RouterReport) -> None:
        """A router's load and demand; requests waiting where no replica runs wake the loop."""
        self._scaler.record(report, self._clock())
        deployment = self._deployments.get(report.deployment_id)
        if report.queued and deployment is not None and deployment.target().num_replicas == 0:
            self._wake.set()

    def _autoscale(self, now: float) -> None:
        for deployment in self._deployments.values():
            scaling = deployment.spec.config.autoscaling_config
            if scaling is None or deployment.removed:
                continue
            if not deployment.history.healthy_once:
                # Until its replicas first all run, idle is not a signal: a slow start would
                # count toward a scale-down. Delays start from a deployment that serves.
                self._scaler.reset(deployment.id)
                continue
            current = deployment.wanted()
            decision = self._scaler.step(deployment.id, scaling, current, now)
            if decision.target != current:
                logger.info("%s: %s", deployment.id, decision.reason)
                deployment.scaled_to = decision.target

    def _stop_order(self, deployment: _Deployment) -> tuple[list[str], dict[str, str]]:
        if deployment.spec.config.autoscaling_config is None:
            return [], {}
        running = [
            r.replica_id for r in deployment.replicas.values()
            if r.phase is Phase.RUNNING and r.code_version == deployment.code_version
        ]
        order, notes = self._scaler.stop_order(deployment.id, running)
        retiring = [r for r in running if deployment.replicas[r].retiring]
        return retiring + [r for r in order if r not in retiring], notes

    async def _hand_off_and_stop(self, deployment: _Deployment, replica: _Replica) -> None:
        """Scale-down: the survivors load the leaving replica's hot models, then it stops,
        so no request pays a reload for a replica that was removed on purpose."""
        keepers = [
            r for r in deployment.replicas.values()
            if r.phase is Phase.RUNNING and not r.retiring and r.control is not None
        ]
        moves = self._scaler.hand_off(
            deployment.id, replica.replica_id, [r.replica_id for r in keepers], deployment.handed
        )
        by_id = {r.replica_id: r for r in keepers}
        if moves:
            logger.info(
                "%s: before stopping %s, preloading %s", deployment.id, replica.replica_id,
                ", ".join(f"{m} on {k}" for m, k in moves),
            )
            results = await asyncio.gather(
                *(self._preload(by_id[k], m) for m, k in moves), return_exceptions=True
            )
            for (model_id, keeper), result in zip(moves, results):
                if result is not True:
                    logger.warning("Preloading %s on %s failed: %s", model_id, keeper, result)
        if replica.phase is Phase.RUNNING:
            replica.phase, replica.since = Phase.STOPPING, self._clock()
            await self._publish(deployment)
            await self._stop_replica(replica, "downscale")

    async def _preload(self, keeper: _Replica, model_id: str) -> bool | str:
        self._preload_seq += 1
        seq = self._preload_seq
        future = asyncio.get_running_loop().create_future()
        keeper.replies[seq] = future
        try:
            keeper.control.send_nowait(Preload(seq, model_id))
            reply = await asyncio.wait_for(future, _HANDOFF_TIMEOUT_S)
            return True if reply.ok else reply.error
        except (ConnectionClosed, OSError, asyncio.TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            keeper.replies.pop(seq, None)

    # ---- replica sets ------------------------------------------------------------------------

    def access_log(self, deployment_id: DeploymentID) -> bool:
        """Whether the deployment's ``logging_config`` keeps its access lines (the proxy asks)."""
        deployment = self._deployments.get(deployment_id)
        logging_config = deployment.spec.config.logging_config if deployment else None
        return logging_config is None or logging_config.enable_access_log

    def replica_set(self, deployment_id: DeploymentID) -> ReplicaSet:
        deployment = self._deployments.get(deployment_id)
        version = self._versions.get(deployment_id, 0)
        if deployment is None or deployment.removed:
            return ReplicaSet(deployment_id, version, (), exists=False)
        config = deployment.spec.config
        return ReplicaSet(
            deployment_id,
            version,
            self._published(deployment),
            config.max_queued_requests,
            max_replicas_per_model=config.max_replicas_per_model,
        )

    @staticmethod
    def _published(deployment: _Deployment) -> tuple[ReplicaInfo, ...]:
        return tuple(
            ReplicaInfo(r.replica_id, r.address, r.spec.config.max_ongoing_requests)
            for r in deployment.replicas.values()
            if r.phase is Phase.RUNNING and r.address is not None
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

    async def _publish(self, deployment: _Deployment) -> None:
        """Bump the deployment's version if what routers should see changed."""
        published = (deployment.removed, deployment.spec.config, self._published(deployment))
        if published == deployment.published:
            return
        deployment.published = published
        async with self._changed:
            self._versions[deployment.id] = self._versions.get(deployment.id, 0) + 1
            self._changed.notify_all()

    # ---- the reconcile loop ------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._closed:
            self._wake.clear()
            now = self._clock()
            if now >= self._next_autoscale or any(
                d.target().num_replicas == 0 and self._scaler.waiting(d.id, now)
                for d in self._deployments.values()
            ):
                self._next_autoscale = now + _AUTOSCALE_PERIOD_S
                self._autoscale(now)
            wake_at = min(now + _LOOP_PERIOD_S, self._next_autoscale)
            for deployment in list(self._deployments.values()):
                try:
                    at = await self._reconcile(deployment)
                except Exception:
                    logger.exception("Reconciling %s failed; trying again.", deployment.id)
                    at = None
                if at is not None:
                    wake_at = min(wake_at, at)
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, wake_at - self._clock()))
            except asyncio.TimeoutError:
                pass

    async def _reconcile(self, deployment: _Deployment) -> float | None:
        now = self._clock()
        observed = [r.observe() for r in deployment.replicas.values()]
        order, notes = self._stop_order(deployment)
        plan = reconcile(
            deployment.target(), observed, deployment.history, now, self._policy, order
        )
        for reason in plan.reasons:
            logger.debug("%s: %s", deployment.id, reason)
        for replica_id in plan.timed_out:
            replica = deployment.replicas[replica_id]
            replica.error = f"replica {replica_id} did not start within {self._policy.start_timeout_s:g}s"
            self._start_failed(deployment, replica)
        if not any(r.retiring for r in deployment.replicas.values()):
            deployment.handed = {}  # a new scale-down: every survivor has its room again
        stopping = []
        for replica in (deployment.replicas[r] for r in plan.stop):
            if replica.retiring:
                continue  # already handing off
            if (
                notes
                and replica.phase is Phase.RUNNING
                and replica.code_version == deployment.code_version
                and replica.replica_id not in plan.timed_out
            ):
                replica.retiring = True
                logger.info(
                    "%s: stop replica %s: %s", deployment.id, replica.replica_id,
                    notes.get(replica.replica_id, "scaled down"),
                )
                self._spawn(self._hand_off_and_stop(deployment, replica))
                continue
            replica.phase, replica.since = Phase.STOPPING, now
            stopping.append(replica)
        await self._publish(deployment)  # routers stop sending to them before they drain
        for replica in stopping:
            self._spawn(self._stop_replica(replica, _stop_reason(deployment, replica)))
        if plan.failed:
            self._give_up(deployment)
            self._wake.set()
        for _ in range(plan.start):
            self._start_replica(deployment, now)
        self._check_waiters(deployment)
        self._events.replicas_healthy(
            deployment.id.name, deployment.id.app,
            sum(r.phase is Phase.RUNNING for r in deployment.replicas.values()),
        )
        return plan.wake_at

    def _check_waiters(self, deployment: _Deployment) -> None:
        if deployment.settled():
            if not deployment.removed:
                deployment.history = History(healthy_once=True)
            waiters, deployment.waiters = deployment.waiters, []
            for future in waiters:
                if not future.done():
                    future.set_result(None)
            if deployment.removed and self._deployments.get(deployment.id) is deployment:
                del self._deployments[deployment.id]
                self._cache_limits.pop(deployment.id, None)
                self._scaler.forget(deployment.id)

    def _give_up(self, deployment: _Deployment) -> None:
        message, tb = deployment.last_error
        error = DeploymentFailedError(deployment.id.name, message or "its replicas kept failing", tb)
        logger.error("%s", str(error).splitlines()[0])
        waiters, deployment.waiters = deployment.waiters, []
        for future in waiters:
            if not future.done():
                future.set_exception(error)
        self._roll_back(deployment)

    # ---- replicas ----------------------------------------------------------------------------

    def _start_replica(self, deployment: _Deployment, now: float) -> None:
        replica_id = f"{deployment.id}#{''.join(random.choices(string.ascii_letters, k=6))}"
        replica = _Replica(replica_id, deployment.spec, deployment.code_version, Phase.STARTING, now)
        deployment.replicas[replica_id] = replica
        self._starting[replica_id] = (deployment, replica)
        self._spawn(self._run_replica(deployment, replica))

    async def _run_replica(self, deployment: _Deployment, replica: _Replica) -> None:
        """Start one replica and follow it to its end; what happened wakes the loop."""
        config = replica.spec.config
        spec = ReplicaSpec(
            replica_id=replica.replica_id,
            deployment_id=deployment.id,
            payload=replica.spec.payload,
            max_ongoing=config.max_ongoing_requests,
            controller_address=self.address,
            secret=self._secret,
            log_dir=self._log_dir,
            sys_path=tuple(p for p in sys.path if p),
            cwd=os.getcwd(),
            ray_actor_options=config.ray_actor_options,
            cache_limits=self._cache_limits.get(deployment.id),
            logging_config=config.logging_config or LoggingConfig(),
            metrics=self._metrics,
            user_config=config.user_config,
        )
        try:
            try:
                replica.process = await self._backend.start(spec)
            except Exception as exc:
                replica.error = f"the backend could not start it: {type(exc).__name__}: {exc}"
                code: int | None = None
            else:
                if replica.phase is Phase.STOPPING:
                    replica.process.kill()
                warn = asyncio.get_running_loop().create_task(self._warn_while_starting(replica))
                try:
                    code = await replica.process.wait()
                finally:
                    warn.cancel()
        finally:
            replica.stopped.set()
            self._starting.pop(replica.replica_id, None)
        how = _how_it_ended(replica.process, code) if replica.process is not None else replica.error
        if replica.phase is Phase.STARTING:
            replica.error = replica.error or f"replica {replica.replica_id} {how}"
            self._start_failed(deployment, replica)
        elif replica.phase is Phase.RUNNING and not self._closed:
            logger.warning("Replica %s %s; replacing it.", replica.replica_id, how)
        if deployment.replicas.get(replica.replica_id) is replica:
            del deployment.replicas[replica.replica_id]
        self._wake.set()

    def _start_failed(self, deployment: _Deployment, replica: _Replica) -> None:
        """Count one failed start of the target version (others no longer matter)."""
        if replica.code_version != deployment.code_version or replica.phase is not Phase.STARTING:
            return
        replica.phase, replica.since = Phase.STOPPING, self._clock()
        history = deployment.history
        deployment.history = History(history.failures + 1, self._clock(), history.healthy_once)
        message, _, tb = replica.error.partition("\n")
        deployment.last_error = (message, tb)
        logger.error(
            "Replica %s of %s failed to start (%d in a row): %s",
            replica.replica_id, deployment.id, deployment.history.failures, message,
        )
        if replica.process is not None:
            replica.process.kill()

    async def _warn_while_starting(self, replica: _Replica) -> None:
        """A replica that no node has room for waits in the backend's queue: say why."""
        started = self._clock()
        while True:
            await asyncio.sleep(_START_WARN_S)
            if replica.phase is not Phase.STARTING:
                return
            options = replica.spec.config.ray_actor_options
            where = (
                f"; no node may have the resources it asks for ({dict(options)})" if options else ""
            )
            logger.warning(
                "Replica %s has not started after %.0fs%s.",
                replica.replica_id, self._clock() - started, where,
            )

    async def _stop_replica(self, replica: _Replica, reason: str = "shutdown") -> None:
        config = replica.spec.config
        timeout = config.graceful_shutdown_timeout_s
        if replica.control is not None and not replica.control.closed:
            try:
                replica.control.send_nowait(
                    StopReplica(timeout, config.graceful_shutdown_wait_loop_s, reason)
                )
                await asyncio.wait_for(replica.stopped.wait(), timeout + 10.0)
            except (ConnectionClosed, asyncio.TimeoutError, OSError):
                pass
        if replica.process is not None:
            replica.process.kill()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- the control channel -----------------------------------------------------------------

    async def accept(self, conn: Channel) -> None:
        """Serve one peer: a replica's control channel, or a watcher of replica sets or routes."""
        try:
            message = await conn.recv()
            if isinstance(message, (ReplicaReady, ReplicaStartFailed)):
                await self._replica_channel(conn, message)
            elif isinstance(message, RouterReport):
                while isinstance(message, RouterReport):
                    self.report(message)
                    message = await conn.recv()
            elif isinstance(message, WatchReplicas):
                while True:
                    conn.send_nowait(await self.watch(message.deployment_id, message.known_version))
                    message = await conn.recv()
                    if not isinstance(message, WatchReplicas):
                        return
            elif isinstance(message, WatchRoutes):
                # A watcher asking with version v has applied v: that is its acknowledgement.
                try:
                    while True:
                        await self._route_watcher_at(conn, message.known_version)
                        conn.send_nowait(await self.watch_routes(message.known_version))
                        message = await conn.recv()
                        if not isinstance(message, WatchRoutes):
                            return
                finally:
                    await self._route_watcher_at(conn, None)
        except ConnectionClosed:
            return

    async def _replica_channel(self, conn: Channel, first: object) -> None:
        deployment, replica = self._starting.get(getattr(first, "replica_id", ""), (None, None))
        if replica is None:
            return
        if isinstance(first, ReplicaStartFailed):
            replica.error = f"{first.error}\n{first.traceback}".rstrip()
            return  # the replica exits; its end counts the failure
        assert isinstance(first, ReplicaReady)
        if replica.phase is not Phase.STARTING:
            return  # stopped or given up on meanwhile; the process is being killed
        replica.address = first.address
        replica.pid = first.pid
        replica.control = conn
        replica.phase, replica.since = Phase.RUNNING, self._clock()
        if replica.code_version == deployment.code_version:
            deployment.history = History(0, -float("inf"), deployment.history.healthy_once)
        self._wake.set()
        self._spawn(self._health_check(deployment, replica))
        if (
            replica.code_version == deployment.code_version
            and replica.spec.config.user_config != deployment.spec.config.user_config
        ):  # it started while its deployment took a new user_config
            self._spawn(self._catch_up(deployment, replica))
        # Keep the channel open: StopReplica and Ping go out on it; answers come back.
        while True:
            message = await conn.recv()
            if isinstance(message, Pong):
                replica.last_pong = message
                replica.pong.set()
            elif isinstance(message, (Preloaded, Reconfigured)):
                future = replica.replies.get(message.seq)
                if future is not None and not future.done():
                    future.set_result(message)
            elif isinstance(message, ReplicaStopped):
                return

    async def _route_watcher_at(self, conn: Channel, version: int | None) -> None:
        async with self._changed:
            if version is None:
                self._route_watchers.pop(id(conn), None)
            else:
                self._route_watchers[id(conn)] = version
            self._changed.notify_all()

    async def _health_check(self, deployment: _Deployment, replica: _Replica) -> None:
        """Ping the replica's control loop; one that stops answering is killed and replaced.

        User code runs on another loop, so a slow model load never fails this check; only a
        wedged process (stopped, deadlocked, a C call holding the GIL) does. A user class with
        ``check_health`` is asked too: after three failures in a row the replica stops (its
        requests finish) and the loop starts a replacement, as Ray Serve does."""
        seq = failures = 0
        while replica.phase is Phase.RUNNING and not replica.stopped.is_set():
            config = replica.spec.config  # read each time: an in-place deploy may change it
            await asyncio.sleep(config.health_check_period_s)
            control = replica.control
            if replica.phase is not Phase.RUNNING or control is None or control.closed:
                return
            seq += 1
            replica.pong.clear()
            timeout = config.health_check_timeout_s
            try:
                control.send_nowait(Ping(seq, timeout))
                await asyncio.wait_for(replica.pong.wait(), timeout + _PONG_GRACE_S)
            except asyncio.TimeoutError:
                if replica.phase is not Phase.RUNNING:
                    return
                logger.error(
                    "Replica %s did not answer a health check within %.1fs; killing it.",
                    replica.replica_id, timeout,
                )
                if replica.process is not None:
                    replica.process.kill()
                return
            except (ConnectionClosed, OSError):
                return
            pong = replica.last_pong
            failures = 0 if pong is None or pong.healthy else failures + 1
            if failures and replica.phase is Phase.RUNNING:
                logger.warning(
                    "Replica %s failed its health check (%d in a row): %s",
                    replica.replica_id, failures, pong.error,
                )
            if failures >= _UNHEALTHY_AFTER and replica.phase is Phase.RUNNING:
                logger.error("Replica %s is unhealthy; replacing it.", replica.replica_id)
                replica.phase, replica.since = Phase.STOPPING, self._clock()
                await self._publish(deployment)
                self._wake.set()
                await self._stop_replica(replica)
                return

    # ---- user_config -------------------------------------------------------------------------

    async def _reconfigure(self, deployment: _Deployment, old: DeploymentSpec) -> None:
        """Hand the deployment's new ``user_config`` to each running replica and wait for all.

        If one's ``reconfigure`` raises, those that took it get the old one back, the target
        keeps the old spec (the caller restores it) and the deploy fails naming the error."""
        new = deployment.spec
        replicas = [
            r for r in deployment.replicas.values()
            if r.phase is Phase.RUNNING and r.code_version == deployment.code_version
            and r.control is not None
        ]
        replies = await asyncio.gather(
            *(self._ask_reconfigure(r, new.config.user_config) for r in replicas)
        )
        failed = [(r, reply) for r, reply in zip(replicas, replies) if not reply.ok]
        if not failed:
            for replica in replicas:
                replica.spec = new
            logger.info("%s: new user_config on %d replicas.", deployment.id, len(replicas))
            return
        took = [r for r, reply in zip(replicas, replies) if reply.ok]
        await asyncio.gather(*(self._ask_reconfigure(r, old.config.user_config) for r in took))
        replica, reply = failed[0]
        error = DeploymentFailedError(
            deployment.id.name, f"reconfigure() raised on replica {replica.replica_id}: {reply.error}",
            reply.traceback, action="reconfigure",
        )
        logger.error("%s; the replicas keep the previous user_config.", str(error).splitlines()[0])
        raise error

    async def _catch_up(self, deployment: _Deployment, replica: _Replica) -> None:
        new = deployment.spec
        reply = await self._ask_reconfigure(replica, new.config.user_config)
        if reply.ok:
            replica.spec = new
        else:
            logger.error("Replica %s could not take the new user_config: %s", replica.replica_id, reply.error)

    async def _ask_reconfigure(self, replica: _Replica, user_config: object) -> Reconfigured:
        """One replica's answer; a replica that went away meanwhile counts as done (its
        replacement starts with the deployment's current user_config)."""
        self._preload_seq += 1
        seq = self._preload_seq
        future = asyncio.get_running_loop().create_future()
        replica.replies[seq] = future
        gone = asyncio.get_running_loop().create_task(replica.stopped.wait())
        timeout = self._policy.start_timeout_s
        try:
            replica.control.send_nowait(Reconfigure(seq, user_config))
            await asyncio.wait({future, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if future.done():
                return future.result()
            if gone.done():
                return Reconfigured(seq, True)
            return Reconfigured(seq, False, f"reconfigure() did not return within {timeout:g}s")
        except (ConnectionClosed, OSError):
            return Reconfigured(seq, True)
        finally:
            replica.replies.pop(seq, None)
            future.cancel()
            gone.cancel()

# What a replica is built from: a change to any of these needs new replicas.
_REPLICA_FIELDS = ("max_ongoing_requests", "ray_actor_options", "logging_config")


def _stop_reason(deployment: _Deployment, replica: _Replica) -> str:
    """Why a replica stops, as its models' eviction metrics tell it."""
    if deployment.removed:
        return "shutdown"
    if replica.code_version != deployment.code_version:
        return "redeploy"
    return "downscale"


def _same_replicas(old: DeploymentSpec, new: DeploymentSpec) -> bool:
    return old.payload == new.payload and all(
        getattr(old.config, f) == getattr(new.config, f) for f in _REPLICA_FIELDS
    )


def _only_user_config_changed(old: DeploymentSpec, new: DeploymentSpec) -> bool:
    return (
        old.payload == new.payload
        and old.config.user_config != new.config.user_config
        and old.config.replace(user_config=None) == new.config.replace(user_config=None)
    )


def _how_it_ended(process: ReplicaProcess | None, code: int | None) -> str:
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
