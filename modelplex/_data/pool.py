"""Connections from one router to the replicas of its deployment.

The pool keeps one connection to every replica the controller lists, and redials one it lost,
with backoff, for as long as the controller still lists it: a network blip costs a reconnect,
not the replica. Each live connection is handed to the router as a ``RunningReplica``, the only
thing the router sends requests through, so the router's tests can script replicas without
sockets (see ``memory``).

Connections go through a ``Dialer``, the transport seam: ``transport.connect`` for real
sockets, ``MemoryNetwork.dial`` in tests.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Awaitable, Callable, Protocol

from .._errors import ReplicaDiedError
from .._messages import Call, Cancel, Chunk, Credit, InFlight, ModelsUpdate, Result, SocketIn, Touch
from .replies import ReplyStream
from .channel import Channel, ConnectionClosed
from .registry import ReplicaView

logger = logging.getLogger("modelplex.router")

Dialer = Callable[[tuple[str, int]], Awaitable[Channel]]
Sleep = Callable[[float], Awaitable[Any]]

CONNECT_TIMEOUT_S = 5.0
# Redial delays: the first soon (a blip), then doubling up to a cap, each with jitter.
REDIAL_FIRST_S = 0.05
REDIAL_MAX_S = 2.0


def redial_delay(attempt: int, rng: random.Random) -> float:
    """Seconds before redial number ``attempt`` (1, 2, ...): doubling, capped, jittered."""
    base = min(REDIAL_MAX_S, REDIAL_FIRST_S * 2 ** (max(1, attempt) - 1))
    return base * (0.5 + 0.5 * rng.random())


class NotSent(Exception):
    """The call never left this process; it is safe to send it elsewhere."""


class RunningReplica(Protocol):
    """One live connection to one replica, as the router uses it."""

    replica_id: str

    def call(self, call: Call) -> "asyncio.Future[Result | ReplyStream]":
        """Send ``call``; the future resolves with its result, or with a ``ReplyStream`` when
        the reply streams. ``NotSent`` if it could not be written; ``ReplicaDiedError``
        through the future (or the stream) if the connection dies first."""

    def cancel(self, request_id: int) -> None: ...

    def touch(self, model_id: str) -> None: ...


class ChannelReplica:
    """A ``RunningReplica`` over a ``Channel``."""

    def __init__(self, replica_id: str, channel: Channel) -> None:
        self.replica_id = replica_id
        self.channel = channel
        self.inflight: dict[int, asyncio.Future] = {}
        self.streams: dict[int, ReplyStream] = {}  # replies under way, chunk by chunk

    @property
    def busy(self) -> bool:
        return bool(self.inflight or self.streams)

    def call(self, call: Call) -> "asyncio.Future[Result | ReplyStream]":
        if self.channel.closed:
            raise NotSent()
        try:
            self.channel.send_nowait(call)
        except (ConnectionClosed, OSError):
            self.channel.close()  # the reader sees it end and the pool redials
            raise NotSent() from None
        future = asyncio.get_running_loop().create_future()
        self.inflight[call.request_id] = future
        return future

    def cancel(self, request_id: int) -> None:
        future = self.inflight.pop(request_id, None)
        if future is not None and not future.done():
            future.cancel()
        self.streams.pop(request_id, None)
        self._send_quietly(Cancel(request_id))

    def touch(self, model_id: str) -> None:
        self._send_quietly(Touch(model_id))

    def _send_quietly(self, message: object) -> None:
        try:
            self.channel.send_nowait(message)
        except (ConnectionClosed, OSError):
            pass  # the reader notices the connection is gone

    def resolve(self, result: Result) -> None:
        future = self.inflight.pop(result.request_id, None)
        if future is not None:
            if not future.done():
                future.set_result(result)
            return
        stream = self.streams.pop(result.request_id, None)
        if stream is not None:
            stream.finish(result)

    def chunk(self, chunk: Chunk) -> None:
        """The first chunk of a reply turns its call's future into a ``ReplyStream``."""
        request_id = chunk.request_id
        stream = self.streams.get(request_id)
        if stream is None:
            future = self.inflight.pop(request_id, None)
            if future is None or future.done():
                return  # the caller left; its Cancel is on the way
            stream = ReplyStream(
                lambda n: self._send_quietly(Credit(request_id, n)),
                lambda: self.cancel(request_id),
                lambda message: self._send_quietly(SocketIn(request_id, message)),
            )
            self.streams[request_id] = stream
            future.set_result(stream)
        stream.push(chunk.payload)

    def credited(self, credit: Credit) -> None:
        """The replica's app consumed ``credit.n`` messages sent up a WebSocket."""
        stream = self.streams.get(credit.request_id)
        if stream is not None:
            stream.uplink.credit(credit.n)

    def fail(self, error: BaseException) -> None:
        inflight, self.inflight = self.inflight, {}
        for future in inflight.values():
            if not future.done():
                future.set_exception(error)
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.fail(error)


class Pool:
    """Keeps the listed replicas connected and reports what happens to the router."""

    def __init__(
        self,
        dial: Dialer,
        *,
        on_ready: Callable[[ReplicaView, ChannelReplica, Any], None],
        on_update: Callable[[ReplicaView, ModelsUpdate], None],
        on_lost: Callable[[ReplicaView, ChannelReplica], None],
        on_in_flight: Callable[[ReplicaView, InFlight], None] = lambda view, message: None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._dial = dial
        self._on_ready = on_ready
        self._on_update = on_update
        self._on_lost = on_lost
        self._on_in_flight = on_in_flight
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._tasks: dict[ReplicaView, asyncio.Task] = {}
        self._live: dict[ReplicaView, ChannelReplica] = {}
        self.dialing_first: set[ReplicaView] = set()  # listed, never yet connected or refused
        self._closed = False

    def add(self, view: ReplicaView) -> None:
        self.dialing_first.add(view)
        task = asyncio.get_running_loop().create_task(self._keep_connected(view))
        self._tasks[view] = task
        task.add_done_callback(lambda _: self._tasks.pop(view, None))

    def drop(self, view: ReplicaView) -> None:
        """The controller no longer lists ``view``: let its requests finish, then hang up."""
        self.dialing_first.discard(view)
        running = self._live.get(view)
        if running is None:
            task = self._tasks.get(view)
            if task is not None:
                task.cancel()
        elif not running.busy:
            running.channel.close()

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for running in list(self._live.values()):
            running.channel.close()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _keep_connected(self, view: ReplicaView) -> None:
        failures = 0
        while view.listed and not self._closed:
            channel = await self._connect(view, failures)
            self.dialing_first.discard(view)
            if channel is None:
                failures += 1
                await self._sleep(redial_delay(failures, self._rng))
                continue
            failures = 0
            await self._serve(view, channel)
            if view.listed and not self._closed:
                logger.warning("Lost the connection to replica %s; redialing.", view.replica_id)
                failures = 1
                await self._sleep(redial_delay(failures, self._rng))

    async def _connect(self, view: ReplicaView, failures: int) -> tuple[Channel, Any] | None:
        """Dial and read the replica's first message (what it holds); None on failure."""
        channel = None
        try:
            channel = await asyncio.wait_for(self._dial(view.info.address), CONNECT_TIMEOUT_S)
            first = await asyncio.wait_for(channel.recv(), CONNECT_TIMEOUT_S)
        except asyncio.CancelledError:
            if channel is not None:
                channel.close()
            raise
        except Exception as exc:
            if channel is not None:
                channel.close()
            log = logger.warning if failures == 0 else logger.debug
            log("Could not connect to replica %s: %r", view.replica_id, exc)
            return None
        return channel, first

    async def _serve(self, view: ReplicaView, connected: tuple[Channel, Any]) -> None:
        channel, first = connected
        running = ChannelReplica(view.replica_id, channel)
        self._live[view] = running
        try:
            self._on_ready(view, running, first)
            while True:
                message = await channel.recv()
                if isinstance(message, Result):
                    running.resolve(message)
                    if not view.listed and not running.busy:
                        return  # drained after the controller dropped it
                elif isinstance(message, Chunk):
                    running.chunk(message)
                elif isinstance(message, ModelsUpdate):
                    self._on_update(view, message)
                elif isinstance(message, Credit):
                    running.credited(message)
                elif isinstance(message, InFlight):
                    self._on_in_flight(view, message)
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an unreadable frame: this connection can't be trusted
            logger.warning("Connection to replica %s failed: %r", view.replica_id, exc)
        finally:
            channel.close()
            del self._live[view]
            running.fail(ReplicaDiedError(view.replica_id, "connection lost"))
            self._on_lost(view, running)
