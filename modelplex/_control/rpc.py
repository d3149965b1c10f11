"""Requests to a replica over its control channel, answered by sequence number.

``Preload`` (a scale-down's hand-off) and ``Reconfigure`` (a new ``user_config``) go out with a
fresh ``seq``; the control channel (``channel.py``) sets the future waiting under that number
when the answer comes back. Each wait has a time limit on the injected time.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import contextmanager
from typing import Iterator

from .._data.channel import ConnectionClosed
from .._errors import DeploymentFailedError
from .._messages import Preload, Reconfigure, Reconfigured
from .._specs import DeploymentSpec
from .state import Deployment, Replica
from .waits import Sleep, wait_for

__all__ = ["Requests"]

logger = logging.getLogger("modelplex.controller")

_HANDOFF_TIMEOUT_S = 30.0  # a scale-down waits at most this long for survivors to preload


class Requests:
    def __init__(self, *, reconfigure_timeout_s: float, sleep: Sleep) -> None:
        self._reconfigure_timeout_s = reconfigure_timeout_s
        self._sleep = sleep
        self._seq = 0

    @contextmanager
    def _expect(self, replica: Replica) -> Iterator[tuple[int, asyncio.Future]]:
        """A new sequence number, and the future its answer will set."""
        self._seq += 1
        seq = self._seq
        future = asyncio.get_running_loop().create_future()
        replica.replies[seq] = future
        try:
            yield seq, future
        finally:
            replica.replies.pop(seq, None)
            future.cancel()

    async def preload(self, keeper: Replica, model_id: str) -> bool | str:
        """True once ``keeper`` has loaded ``model_id``, or why it has not."""
        with self._expect(keeper) as (seq, future):
            try:
                keeper.control.send_nowait(Preload(seq, model_id))
                reply = await wait_for(future, _HANDOFF_TIMEOUT_S, self._sleep)
                return True if reply.ok else reply.error
            except (ConnectionClosed, OSError, asyncio.TimeoutError) as exc:
                return f"{type(exc).__name__}: {exc}"

    async def reconfigure(self, deployment: Deployment, old: DeploymentSpec) -> None:
        """Hand the deployment's new ``user_config`` to each running replica and wait for all.

        If one's ``reconfigure`` raises, those that took it get the old one back, the target
        keeps the old spec (the caller restores it) and the deploy fails naming the error."""
        new = deployment.spec
        replicas = [r for r in deployment.running() if r.control is not None]
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

    def needs_catch_up(self, deployment: Deployment, replica: Replica) -> bool:
        """It started while its deployment took a new ``user_config``."""
        return (
            replica.code_version == deployment.code_version
            and replica.spec.config.user_config != deployment.spec.config.user_config
        )

    async def catch_up(self, deployment: Deployment, replica: Replica) -> None:
        new = deployment.spec
        reply = await self._ask_reconfigure(replica, new.config.user_config)
        if reply.ok:
            replica.spec = new
        else:
            logger.error("Replica %s could not take the new user_config: %s", replica.replica_id, reply.error)

    async def _ask_reconfigure(self, replica: Replica, user_config: object) -> Reconfigured:
        """One replica's answer; a replica that went away meanwhile counts as done (its
        replacement starts with the deployment's current user_config)."""
        timeout = self._reconfigure_timeout_s
        with self._expect(replica) as (seq, future):
            gone = asyncio.get_running_loop().create_task(replica.stopped.wait())
            try:
                replica.control.send_nowait(Reconfigure(seq, user_config))
                try:
                    await wait_for(
                        asyncio.wait({future, gone}, return_when=asyncio.FIRST_COMPLETED),
                        timeout, self._sleep,
                    )
                except asyncio.TimeoutError:
                    pass
                if future.done():
                    return future.result()
                if gone.done():
                    return Reconfigured(seq, True)
                return Reconfigured(seq, False, f"reconfigure() did not return within {timeout:g}s")
            except (ConnectionClosed, OSError):
                return Reconfigured(seq, True)
            finally:
                gone.cancel()
