"""Replica processes: start one, follow it to its end, count its failed start, stop one.

Each replica is followed by one task from the backend's start to the process's exit; what
happened is recorded on its ``Replica`` and wakes the reconcile loop, which decides what next.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import string
import sys
from typing import TYPE_CHECKING, Callable

from .._config import LoggingConfig, MetricsOptions
from .._data.channel import Channel, ConnectionClosed
from .._messages import ReplicaReady, StopReplica
from .._specs import Placement, ReplicaSpec
from .backends import Backend, ReplicaProcess
from .reconcile import History, Phase
from .state import Deployment, Replica
from .targets import Targets
from .waits import Background, Clock, Sleep, wait_for

if TYPE_CHECKING:
    from .._storage.config import StorageConfig

__all__ = ["ReplicaRunner"]

logger = logging.getLogger("modelplex.controller")

_START_WARN_S = 30.0


class ReplicaRunner:
    def __init__(
        self,
        backend: Backend,
        targets: Targets,
        *,
        address: Callable[[], tuple[str, int]],
        secret: bytes,
        log_dir: str,
        metrics: MetricsOptions | None,
        storage: StorageConfig | None,
        background: Background,
        wake: Callable[[], None],
        clock: Clock,
        sleep: Sleep,
        release: Callable[[str], None] = lambda replica_id: None,
    ) -> None:
        """``release`` is told of each replica whose process ended (the node's ledger)."""
        self._backend = backend
        self._release = release
        self._targets = targets
        self._address = address  # the controller's, once it listens
        self._secret = secret
        self._log_dir = log_dir
        self._metrics = metrics  # handed to replicas: metrics on, and where they go
        self._storage = storage  # the node's disk tier, as the driver read it
        self._background = background
        self._wake = wake
        self._clock = clock
        self._sleep = sleep
        self._starting: dict[str, tuple[Deployment, Replica]] = {}
        self._closed = False

    def close(self) -> None:
        """Replicas that end from now on are not replaced: say nothing of them."""
        self._closed = True

    def start(self, deployment: Deployment, now: float, *, pending: bool = False) -> Replica:
        """A new replica of the target version; ``pending`` waits for room on the node
        (``launch`` starts it once the scheduler placed it)."""
        replica_id = f"{deployment.id}#{''.join(random.choices(string.ascii_letters, k=6))}"
        phase = Phase.PENDING if pending else Phase.STARTING
        replica = Replica(replica_id, deployment.spec, deployment.code_version, phase, now)
        deployment.replicas[replica_id] = replica
        if not pending:
            self.launch(deployment, replica, None, now)
        return replica

    def launch(
        self, deployment: Deployment, replica: Replica, placement: Placement | None, now: float
    ) -> None:
        """Ask the backend for the replica's process, with what the node gave it."""
        replica.phase, replica.since, replica.placement = Phase.STARTING, now, placement
        replica.waiting_for = ""
        self._starting[replica.replica_id] = (deployment, replica)
        self._background.spawn(self._run(deployment, replica))

    def starting(self, replica_id: str) -> tuple[Deployment, Replica] | None:
        """The replica that dialled in with this id, if it is one being started."""
        return self._starting.get(replica_id)

    def ready(self, deployment: Deployment, replica: Replica, ready: ReplicaReady, conn: Channel) -> bool:
        """The replica said it is ready on ``conn``: it runs (False: it was given up on)."""
        if replica.phase is not Phase.STARTING:
            return False  # stopped or given up on meanwhile; the process is being killed
        replica.address = ready.address
        replica.pid = ready.pid
        replica.control = conn
        replica.phase, replica.since = Phase.RUNNING, self._clock()
        if replica.code_version == deployment.code_version:
            deployment.history = History(0, -float("inf"), deployment.history.healthy_once)
        self._wake()
        return True

    def _spec(self, deployment: Deployment, replica: Replica) -> ReplicaSpec:
        config = replica.spec.config
        return ReplicaSpec(
            replica_id=replica.replica_id,
            deployment_id=deployment.id,
            payload=replica.spec.payload,
            max_ongoing=config.max_ongoing_requests,
            controller_address=self._address(),
            secret=self._secret,
            log_dir=self._log_dir,
            sys_path=tuple(p for p in sys.path if p),
            cwd=os.getcwd(),
            ray_actor_options=config.ray_actor_options,
            cache_limits=self._targets.cache_limits(deployment.id),
            logging_config=config.logging_config or LoggingConfig(),
            metrics=self._metrics,
            user_config=config.user_config,
            storage=self._storage,
            interface=replica.spec.interface,
            placement=replica.placement,
        )

    async def _run(self, deployment: Deployment, replica: Replica) -> None:
        """Start one replica and follow it to its end; what happened wakes the loop."""
        spec = self._spec(deployment, replica)
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
            self._release(replica.replica_id)  # its process is gone: so is its reservation
            replica.stopped.set()
            self._starting.pop(replica.replica_id, None)
        how = _how_it_ended(replica.process, code) if replica.process is not None else replica.error
        if replica.phase is Phase.STARTING:
            replica.error = replica.error or f"replica {replica.replica_id} {how}"
            self.start_failed(deployment, replica)
        elif replica.phase is Phase.RUNNING and not self._closed:
            logger.warning("Replica %s %s; replacing it.", replica.replica_id, how)
        if deployment.replicas.get(replica.replica_id) is replica:
            del deployment.replicas[replica.replica_id]
        self._wake()

    def start_failed(self, deployment: Deployment, replica: Replica) -> None:
        """Count one failed start of the target version (others no longer matter)."""
        if replica.code_version != deployment.code_version or replica.phase is not Phase.STARTING:
            return
        replica.stopping(self._clock())
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

    async def _warn_while_starting(self, replica: Replica) -> None:
        """A replica that no node has room for waits in the backend's queue: say why."""
        started = self._clock()
        while True:
            await self._sleep(_START_WARN_S)
            if replica.phase is not Phase.STARTING:
                return
            options = replica.spec.config.ray_actor_options
            where = (  # a backend that places (local) started it only once it fitted
                f"; no node may have the resources it asks for ({dict(options)})"
                if options and self._backend.inventory is None else ""
            )
            logger.warning(
                "Replica %s has not started after %.0fs%s.",
                replica.replica_id, self._clock() - started, where,
            )

    async def stop(self, replica: Replica, reason: str = "shutdown") -> None:
        """Ask the replica to stop (its requests finish), and kill it if it does not."""
        config = replica.spec.config
        timeout = config.graceful_shutdown_timeout_s
        if replica.control is not None and not replica.control.closed:
            try:
                replica.control.send_nowait(
                    StopReplica(timeout, config.graceful_shutdown_wait_loop_s, reason)
                )
                await wait_for(replica.stopped.wait(), timeout + 10.0, self._sleep)
            except (ConnectionClosed, asyncio.TimeoutError, OSError):
                pass
        if replica.process is not None:
            replica.process.kill()


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
