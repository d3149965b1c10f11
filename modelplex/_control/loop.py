"""The reconcile loop: each pass compares every deployment's target with its replicas and
applies what ``reconcile.reconcile`` decides (start, stop, give up on a version and roll back).

Events (a replica ready, a replica gone, a health check missed, a deploy) only wake the loop,
which also runs on a timer; it waits on the injected time.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from .._errors import DeploymentFailedError
from .._events import ControllerEvents
from .autoscale.apply import Autoscaling
from .publisher import Publisher
from .reconcile import History, Phase, Policy, reconcile
from .replicas import ReplicaRunner
from .scheduling import Scheduler
from .state import Deployment, Replica
from .targets import Targets
from .waits import Background, Clock, Sleep, wait_for

__all__ = ["ReconcileLoop"]

logger = logging.getLogger("modelplex.controller")

Fits = Callable[[frozenset[str]], bool]  # the scheduler's: would it fit once these let go?

_LOOP_PERIOD_S = 1.0  # the loop looks again at least this often, events or not


class ReconcileLoop:
    def __init__(
        self,
        targets: Targets,
        runner: ReplicaRunner,
        publisher: Publisher,
        autoscaling: Autoscaling,
        scheduler: Scheduler,
        *,
        policy: Policy,
        events: ControllerEvents,
        wake: asyncio.Event,
        background: Background,
        clock: Clock,
        sleep: Sleep,
    ) -> None:
        self._targets = targets
        self._runner = runner
        self._publisher = publisher
        self._autoscaling = autoscaling
        self._scheduler = scheduler
        self._policy = policy
        self._events = events
        self._wake = wake
        self._background = background
        self._clock = clock
        self._sleep = sleep
        self._closed = False

    def close(self) -> None:
        self._closed = True

    async def run(self) -> None:
        while not self._closed:
            self._wake.clear()
            now = self._clock()
            wake_at = min(now + _LOOP_PERIOD_S, self._autoscaling.step(now))
            for deployment in list(self._targets.deployments.values()):
                try:
                    at = await self._reconcile(deployment)
                except Exception:
                    logger.exception("Reconciling %s failed; trying again.", deployment.id)
                    at = None
                if at is not None:
                    wake_at = min(wake_at, at)
            now = self._clock()
            for deployment, replica, placement in self._scheduler.place(
                list(self._targets.deployments.values())
            ):
                self._runner.launch(deployment, replica, placement, now)
            try:
                await wait_for(self._wake.wait(), wake_at - self._clock(), self._sleep)
            except asyncio.TimeoutError:
                pass

    async def _reconcile(self, deployment: Deployment) -> float | None:
        now = self._clock()
        observed = [r.observe() for r in deployment.replicas.values()]
        order, notes = self._autoscaling.stop_order(deployment)
        fits = self._scheduler.fits_for(deployment)
        plan = reconcile(
            deployment.target(), observed, deployment.history, now, self._policy, order,
            fits=fits,
        )
        for reason in plan.reasons:
            logger.debug("%s: %s", deployment.id, reason)
        for replica_id in plan.timed_out:
            replica = deployment.replicas[replica_id]
            replica.error = f"replica {replica_id} did not start within {self._policy.start_timeout_s:g}s"
            self._runner.start_failed(deployment, replica)
        if not any(r.retiring for r in deployment.replicas.values()):
            deployment.handed = {}  # a new scale-down: every survivor has its room again
        stopping = []
        for replica in (deployment.replicas[r] for r in plan.stop):
            if replica.phase is Phase.PENDING:
                del deployment.replicas[replica.replica_id]  # never started: nothing to stop
                continue
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
                self._background.spawn(self._autoscaling.hand_off_and_stop(deployment, replica))
                continue
            replica.stopping(now)
            stopping.append(replica)
        await self._publisher.publish(deployment)  # routers stop sending to them before they drain
        for replica in stopping:
            self._background.spawn(self._runner.stop(replica, _stop_reason(deployment, replica)))
        if plan.failed:
            self._give_up(deployment)
            self._wake.set()
        for _ in range(plan.start):
            self._runner.start(deployment, now, pending=self._scheduler.active)
        self._check_waiters(deployment, fits)
        self._events.replicas_healthy(
            deployment.id.name, deployment.id.app,
            sum(r.phase is Phase.RUNNING for r in deployment.replicas.values()),
        )
        return plan.wake_at

    def _check_waiters(self, deployment: Deployment, fits: Fits | None) -> None:
        if deployment.settled():
            if not deployment.removed:
                deployment.history = History(healthy_once=True)
            self._release_waiters(deployment)
            if deployment.removed and self._targets.forget(deployment):
                self._autoscaling.forget(deployment.id)
        elif deployment.waiters and _waits_only_for_others(deployment, fits):
            # Only room that other deployments hold would let the rest start: waiting here
            # would hold the deploy lock that a delete freeing that room needs.
            running = len(deployment.running())
            logger.warning(
                "%s: %d of %d replicas run; the others are pending until the node has room "
                "(serve.status() says what they wait for).", deployment.id, running,
                deployment.target().num_replicas,
            )
            self._release_waiters(deployment)

    def _release_waiters(self, deployment: Deployment) -> None:
        waiters, deployment.waiters = deployment.waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)

    def _give_up(self, deployment: Deployment) -> None:
        message, tb = deployment.last_error
        error = DeploymentFailedError(deployment.id.name, message or "its replicas kept failing", tb)
        logger.error("%s", str(error).splitlines()[0])
        waiters, deployment.waiters = deployment.waiters, []
        for future in waiters:
            if not future.done():
                future.set_exception(error)
        self._targets.roll_back(deployment)


def _waits_only_for_others(deployment: Deployment, fits: Fits | None) -> bool:
    """Every replica of the target version runs or is pending, and the pending ones would
    not fit even if this deployment's other replicas (older versions, stopping) let go."""
    if fits is None or deployment.removed:
        return False
    current = [r for r in deployment.replicas.values() if r.code_version == deployment.code_version]
    if len(current) != deployment.target().num_replicas or any(
        r.phase not in (Phase.RUNNING, Phase.PENDING) for r in current
    ):
        return False
    if not any(r.phase is Phase.PENDING for r in current):
        return False
    others = frozenset(r.replica_id for r in deployment.replicas.values() if r not in current)
    return not fits(others)


def _stop_reason(deployment: Deployment, replica: Replica) -> str:
    """Why a replica stops, as its models' eviction metrics tell it."""
    if deployment.removed:
        return "shutdown"
    if replica.code_version != deployment.code_version:
        return "redeploy"
    return "downscale"
