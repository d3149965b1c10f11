"""The unit tests' shared fakes: a clock the test moves, ``settle``, a controller as a router
sees it, scripted replicas, and a connection that records what a replica sends.

Everything runs on the test's event loop over ``modelplex._data.memory``: no processes, no sockets,
and no real time (a router's ticks and redial backoff, the controller's loop, health checks and
time-outs sleep on ``FakeClock``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import pickle
import random

from modelplex._data.memory import MemoryNetwork
from modelplex._messages import (
    Call,
    Cancel,
    Credit,
    DeploymentID,
    ModelsUpdate,
    ReplicaInfo,
    ReplicaSet,
    Result,
    Touch,
)
from modelplex._data.router import Router
from modelplex._replica.inflight import InFlightCounts

DEPLOYMENT = DeploymentID("app", "d")
_ports = itertools.count(1)


async def settle(turns: int = 20) -> None:
    """Let every ready callback and task run (event-loop turns, not time)."""
    for _ in range(turns):
        await asyncio.sleep(0)


class FakeClock:
    """``now`` moves only when the test calls ``advance``; ``sleep`` waits for that.

    With ``tick``, every reading first moves ``now`` on by that much, so each event a pure
    policy or the model cache stamps has a time of its own."""

    def __init__(self, start: float = 0.0, *, tick: float = 0.0) -> None:
        self.now = start
        self.tick = tick
        self._sleepers: list[tuple[float, int, asyncio.Future]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        self.now += self.tick
        return self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._seq), future))
        await future

    async def advance(self, seconds: float, step: float = 0.01) -> None:
        """Move time forward in steps, letting the loop run at each, as real time would."""
        end = self.now + seconds
        while self.now < end - 1e-12:
            self.now = min(end, self.now + step)
            while self._sleepers and self._sleepers[0][0] <= self.now + 1e-12:
                _, _, future = heapq.heappop(self._sleepers)
                if not future.done():
                    future.set_result(None)
            await settle()


class FakeConn:
    """A router's connection as the replica's end of a reply uses it: what was sent, in order."""

    closed = False

    def __init__(self) -> None:
        self.sent: list = []

    def send_nowait(self, message) -> None:
        self.sent.append(message)


class Directory:
    """The controller, as a router sees it: replica sets under increasing versions."""

    def __init__(self) -> None:
        self.current: ReplicaSet | None = None
        self.reports: list = []
        self._changed = asyncio.Condition()

    async def publish(self, replicas, *, max_queued: int = -1, version: int | None = None,
                      tenants=None, loads_models: bool = False) -> None:
        version = (self.current.version + 1 if self.current else 1) if version is None else version
        self.current = ReplicaSet(
            DEPLOYMENT, version, tuple(r.info for r in replicas), max_queued, tenants=tenants,
            loads_models=loads_models,
        )
        async with self._changed:
            self._changed.notify_all()
        await settle()

    def report(self, report) -> None:
        self.reports.append(report)

    async def watch(self, deployment_id, known_version):
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.current is not None and self.current.version != known_version
            )
            return self.current


class FakeReplica:
    """A replica scripted by the test: it records calls and answers them when told to, and
    tells each router what the others run there, as a replica does (``InFlightCounts``)."""

    def __init__(self, net: MemoryNetwork, name: str, *, max_ongoing: int = 5,
                 loaded: dict[str, float] | None = None, auto_reply: bool = False,
                 capacity: int | None = None) -> None:
        self.net = net
        self.name = name
        self.info = ReplicaInfo(name, ("memory", next(_ports)), max_ongoing)
        self.loaded = dict(loaded or {})
        self.loading: tuple[str, ...] = ()  # what it says it is loading
        self.version = 0
        self.auto_reply = auto_reply
        self.capacity = capacity  # models kept when auto-replying (LRU), None: all
        self.pending: list[tuple[object, Call]] = []
        self.calls: list[Call] = []
        self.touches: list[str] = []
        self.cancels: list[int] = []
        self.credits: list[tuple[int, int]] = []
        self.channels: set = set()
        self.in_flight = InFlightCounts(
            lambda channel, message: channel.send_nowait(message),
            lambda delay, flush: asyncio.get_running_loop().call_soon(flush),
        )
        net.listen(self.info.address, self._handle)

    @property
    def address(self):
        return self.info.address

    def update(self, *, version: int | None = None) -> ModelsUpdate:
        self.version = self.version + 1 if version is None else version
        return ModelsUpdate(self.name, self.version, dict(self.loaded), self.loading, True)

    def push(self, *, version: int | None = None) -> None:
        update = self.update(version=version)
        for channel in list(self.channels):
            if not channel.closed:
                channel.send_nowait(update)

    async def _handle(self, channel) -> None:
        self.channels.add(channel)
        self.in_flight.connected(channel)
        channel.send_nowait(self.update(version=self.version))
        try:
            while True:
                message = await channel.recv()
                if isinstance(message, Call):
                    self.calls.append(message)
                    self.in_flight.arrived(channel, message.model_id)
                    if self.auto_reply:
                        self._answer(channel, message)
                    else:
                        self.pending.append((channel, message))
                elif isinstance(message, Touch):
                    self.touches.append(message.model_id)
                elif isinstance(message, Cancel):
                    self.cancels.append(message.request_id)
                elif isinstance(message, Credit):
                    self.credits.append((message.request_id, message.n))
        finally:
            self.in_flight.disconnected(channel)

    def _answer(self, channel, call: Call) -> None:
        self.in_flight.finished(channel, call.model_id)
        if call.model_id and call.model_id not in self.loaded:
            self.loaded[call.model_id] = 0.01
            if self.capacity is not None and len(self.loaded) > self.capacity:
                self.loaded.pop(next(iter(self.loaded)))
            channel.send_nowait(self.update())
        if not channel.closed:
            channel.send_nowait(Result(call.request_id, True, pickle.dumps(self.name)))

    async def reply_all(self) -> None:
        pending, self.pending = self.pending, []
        for channel, call in pending:
            if not channel.closed:
                self._answer(channel, call)
        await settle()


async def make_router(net: MemoryNetwork, directory: Directory, clock: FakeClock, **kwargs) -> Router:
    return Router(
        DEPLOYMENT, directory, net.dial, clock=clock, sleep=clock.sleep,
        rng=random.Random(0), **kwargs,
    )
