"""Health checks: ping each running replica; one that stops answering, or whose user
``check_health`` keeps failing, is stopped and the loop replaces it.

User code runs on another loop in the replica, so a slow model load never fails the ping; only
a wedged process (stopped, deadlocked, a C call holding the GIL) does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from .._data.channel import ConnectionClosed
from .._messages import Ping
from .publisher import Publisher
from .reconcile import Phase
from .replicas import ReplicaRunner
from .state import Deployment, Replica
from .waits import Background, Clock, Sleep, wait_for

__all__ = ["HealthChecker"]

logger = logging.getLogger("modelplex.controller")

_PONG_GRACE_S = 0.5  # beyond health_check_timeout_s, for the replica's answer to arrive
_UNHEALTHY_AFTER = 3  # failed check_health calls in a row, as Ray's threshold


class HealthChecker:
    def __init__(
        self,
        runner: ReplicaRunner,
        publisher: Publisher,
        *,
        background: Background,
        wake: Callable[[], None],
        clock: Clock,
        sleep: Sleep,
    ) -> None:
        self._runner = runner
        self._publisher = publisher
        self._background = background
        self._wake = wake
        self._clock = clock
        self._sleep = sleep

    def start(self, deployment: Deployment, replica: Replica) -> None:
        """Check ``replica`` for as long as it runs."""
        self._background.spawn(self._check(deployment, replica))

    async def _check(self, deployment: Deployment, replica: Replica) -> None:
        """A user class with ``check_health`` is asked too: after three failures in a row the
        replica stops (its requests finish) and the loop starts a replacement, as Ray Serve
        does."""
        seq = failures = 0
        while replica.phase is Phase.RUNNING and not replica.stopped.is_set():
            config = replica.spec.config  # read each time: an in-place deploy may change it
            await self._sleep(config.health_check_period_s)
            control = replica.control
            if replica.phase is not Phase.RUNNING or control is None or control.closed:
                return
            seq += 1
            replica.pong.clear()
            timeout = config.health_check_timeout_s
            try:
                control.send_nowait(Ping(seq, timeout))
                await wait_for(replica.pong.wait(), timeout + _PONG_GRACE_S, self._sleep)
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
                replica.stopping(self._clock())
                await self._publisher.publish(deployment)
                self._wake()
                await self._runner.stop(replica)
                return
