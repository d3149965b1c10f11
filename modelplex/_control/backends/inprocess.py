"""A backend whose replicas are objects on the controller's own event loop.

For the controller's tests: each replica speaks the control protocol (ready or failed to start,
pings, stop) over ``_data/memory.py``, and the test decides how it behaves: how long it takes
to start, whether its start fails, when it crashes, whether its ``reconfigure`` raises, whether
its ``check_health`` fails and whether it answers pings at all. It serves no requests.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Awaitable, Callable

from ..._data.memory import MemoryNetwork
from ..._messages import (
    Ping,
    Pong,
    Reconfigure,
    Reconfigured,
    ReplicaReady,
    ReplicaStartFailed,
    ReplicaStopped,
    StopReplica,
)
from ..._specs import ProxyInfo, ProxySpec, ReplicaSpec
from ..._data.channel import ConnectionClosed
from ..resources import Inventory

# What the next start does: (seconds it takes, the error it fails with or None).
Behaviour = Callable[[ReplicaSpec], tuple[float, str | None]]


class InProcessReplica:
    def __init__(self, spec: ReplicaSpec) -> None:
        self.replica_id = spec.replica_id
        self.spec = spec
        self.exit_reason: str | None = None
        self.ready = False
        self.user_config: Any = spec.user_config  # what its reconfigure() last took
        self.unhealthy = ""  # set by a test: check_health raises this
        self.wedged = False  # set by a test: pings go unanswered, as from a hung process
        self._exit: asyncio.Future = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        return None

    @property
    def alive(self) -> bool:
        return not self._exit.done()

    async def wait(self) -> int | None:
        return await asyncio.shield(self._exit)

    def kill(self) -> None:
        self.end(-9)

    def crash(self) -> None:
        """The replica process dies on its own (the test's fault)."""
        self.end(1)

    def end(self, code: int) -> None:
        if not self._exit.done():
            self._exit.set_result(code)
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()


class InProcessBackend:
    name = "in-process"
    node_id = "in-process"
    listen_host = "in-process"

    def __init__(
        self,
        net: MemoryNetwork,
        behaviour: Behaviour = lambda spec: (0.0, None),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        inventory: Inventory | None = None,
    ) -> None:
        """With an ``inventory`` the controller places replicas on it, as on the local one."""
        self.inventory = inventory
        self._net = net
        self._behaviour = behaviour
        self._sleep = sleep
        self._ports = itertools.count(1)
        # What a replica's reconfigure(user_config) does: None, or the error it raises.
        self.reconfigure: Callable[[InProcessReplica, Any], str | None] = lambda replica, config: None
        self.replicas: list[InProcessReplica] = []  # every replica ever started, in order
        self.on_change: Callable[[], None] = lambda: None  # called on every start and exit

    def live(self) -> list[InProcessReplica]:
        return [r for r in self.replicas if r.alive]

    async def start(self, spec: ReplicaSpec) -> InProcessReplica:
        replica = InProcessReplica(spec)
        self.replicas.append(replica)
        replica._exit.add_done_callback(lambda _: self.on_change())
        replica._task = asyncio.get_running_loop().create_task(self._run(replica))
        self.on_change()
        return replica

    async def _run(self, replica: InProcessReplica) -> None:
        spec = replica.spec
        try:
            delay, error = self._behaviour(spec)
            await self._sleep(delay)
            channel = await self._net.dial(spec.controller_address)
            if error is not None:
                channel.send_nowait(ReplicaStartFailed(spec.replica_id, error, ""))
                replica.end(0)
                return
            channel.send_nowait(ReplicaReady(spec.replica_id, ("in-process", next(self._ports)), 0))
            replica.ready = True
            while True:
                message = await channel.recv()
                if isinstance(message, Ping):
                    if replica.wedged:
                        continue
                    channel.send_nowait(Pong(message.seq, not replica.unhealthy, replica.unhealthy))
                elif isinstance(message, Reconfigure):
                    error = self.reconfigure(replica, message.user_config)
                    if error is None:
                        replica.user_config = message.user_config
                    channel.send_nowait(Reconfigured(message.seq, error is None, error or ""))
                elif isinstance(message, StopReplica):
                    channel.send_nowait(ReplicaStopped(spec.replica_id))
                    replica.end(0)
                    return
        except ConnectionClosed:
            replica.end(0)

    async def start_proxies(self, spec: ProxySpec) -> list[ProxyInfo]:
        return []

    async def refresh_proxies(self) -> list[ProxyInfo]:
        return []

    async def close(self) -> None:
        for replica in self.replicas:
            replica.kill()
