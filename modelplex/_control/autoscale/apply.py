"""Autoscaling glue: the routers' reports and the replicas' model events go to the ``Scaler``
(and to the status's ``Figures``), its decisions become targets, and a scale-down hands the
leaving replica's hot models to the survivors before it stops.

The decisions themselves are the pure policy's (``policy.py``, its state kept by ``scaler.py``);
this module only feeds it and applies what it says.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from ..._messages import DeploymentID, ModelEvents, RouterReport
from ..figures import Figures, Stats
from ..publisher import Publisher
from ..reconcile import Phase
from ..replicas import ReplicaRunner
from ..rpc import Requests
from ..state import Deployment, Replica
from ..targets import Targets
from ..waits import Clock
from .scaler import Scaler

__all__ = ["Autoscaling"]

logger = logging.getLogger("modelplex.controller")

_AUTOSCALE_PERIOD_S = 0.5  # how often autoscaling deployments sample their load and decide


class Autoscaling:
    def __init__(
        self,
        targets: Targets,
        runner: ReplicaRunner,
        publisher: Publisher,
        requests: Requests,
        *,
        wake: Callable[[], None],
        clock: Clock,
        scaler: Scaler | None = None,
    ) -> None:
        self._targets = targets
        self._runner = runner
        self._publisher = publisher
        self._requests = requests
        self._wake = wake
        self._clock = clock
        self._scaler = scaler or Scaler()
        self.figures = Figures()
        self._next = 0.0

    def report(self, report: RouterReport) -> None:
        """A router's load and demand; requests waiting where no replica runs wake the loop."""
        now = self._clock()
        self._scaler.record(report, now)
        self.figures.report(report, now)
        deployment = self._targets.deployments.get(report.deployment_id)
        if report.queued and deployment is not None and deployment.target().num_replicas == 0:
            self._wake()

    def models(self, deployment_id: DeploymentID, message: ModelEvents) -> None:
        """A replica's cache events: its loads and unloads, as they happened."""
        now = self._clock()
        self._scaler.models(deployment_id, message, now)
        self.figures.models(deployment_id, message, now)

    def stats(self, deployment_id: DeploymentID, now: float) -> Stats:
        return self.figures.stats(deployment_id, now)

    def forget(self, deployment_id: DeploymentID) -> None:
        self._scaler.forget(deployment_id)
        self.figures.forget(deployment_id)

    def step(self, now: float) -> float:
        """Decide new counts when it is time (at once for requests waiting on no replica);
        returns when it is time next."""
        if now >= self._next or any(
            d.target().num_replicas == 0 and self._scaler.waiting(d.id, now)
            for d in self._targets.deployments.values()
        ):
            self._next = now + _AUTOSCALE_PERIOD_S
            self._decide(now)
        return self._next

    def _decide(self, now: float) -> None:
        for deployment in self._targets.deployments.values():
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

    def stop_order(self, deployment: Deployment) -> tuple[list[str], dict[str, str]]:
        """Which running replicas a scale-down stops first, with a note on each (none for a
        deployment that does not autoscale)."""
        if deployment.spec.config.autoscaling_config is None:
            return [], {}
        running = [r.replica_id for r in deployment.running()]
        order, notes = self._scaler.stop_order(deployment.id, running)
        retiring = [r for r in running if deployment.replicas[r].retiring]
        return retiring + [r for r in order if r not in retiring], notes

    async def hand_off_and_stop(self, deployment: Deployment, replica: Replica) -> None:
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
                *(self._requests.preload(by_id[k], m) for m, k in moves), return_exceptions=True
            )
            for (model_id, keeper), result in zip(moves, results):
                if result is not True:
                    logger.warning("Preloading %s on %s failed: %s", model_id, keeper, result)
        if replica.phase is Phase.RUNNING:
            replica.stopping(self._clock())
            await self._publisher.publish(deployment)
            await self._runner.stop(replica, "downscale")
