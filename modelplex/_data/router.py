"""The router of one deployment in one process: places requests, sends them, returns results.

It composes the parts, each with one job:

- ``Placement``: where each request goes (the pure ``routing.choose_replica`` over what the
  registry knows), and the ``WaitQueue`` of those it cannot place yet;
- the ``ReplicaRegistry``: what this router knows of each replica, from versioned updates;
- the ``Pool``: a connection per listed replica, redialled when lost, seen as ``RunningReplica``;
- ``Demand``: the load and demand it reports to the controller; ``codec``: arguments and
  replies on the wire.

The router itself watches the replica set, sends each placed call and decodes its reply. The
clock, the sleep and the random source are injected, so the tests drive time themselves.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import random
import time
from typing import Any, Callable, Protocol

from .._errors import (
    ReplicaDiedError,
    ReplicasNotReadyError,
    ShuttingDownError,
)
from .._events import NO_ROUTER_EVENTS, RouterEvents
from .._messages import (
    Call,
    DeploymentID,
    GRPCRequest,
    HTTPRequest,
    InFlight,
    ModelsUpdate,
    ReplicaSet,
    Result,
    RouterReport,
)
from .codec import decode_item, decode_result, encode_args
from .demand import Demand
from .placement import Placement, Slot
from .replies import ReplyStream
from .pool import ChannelReplica, Dialer, NotSent, Pool, Sleep
from .registry import ReplicaRegistry, ReplicaView

logger = logging.getLogger("modelplex.router")

SEND_ATTEMPTS = 3
# How often a router tells the controller what load and demand it sees (for autoscaling).
REPORT_S = 0.5


class ReplicaDirectory(Protocol):
    """Where a router learns the replicas of a deployment (the controller, near or far), and
    tells it what load it sees."""

    async def watch(self, deployment_id: DeploymentID, known_version: int) -> ReplicaSet: ...

    def report(self, report: RouterReport) -> None: ...


class Router:
    def __init__(
        self,
        deployment_id: DeploymentID,
        directory: ReplicaDirectory,
        dial: Dialer,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        default_load_cost_s: float = 1.0,
        events: RouterEvents = NO_ROUTER_EVENTS,
    ) -> None:
        self.deployment_id = deployment_id
        self._events = events
        self._directory = directory
        self._rng = rng or random.Random()
        self._clock = clock
        self._sleep = sleep
        self._default_load_cost_s = default_load_cost_s
        self._registry = ReplicaRegistry()
        self._pool = Pool(
            dial, on_ready=self._on_ready, on_update=self._on_update, on_lost=self._on_lost,
            on_in_flight=self._on_in_flight, sleep=sleep, rng=self._rng,
        )
        self._ids = itertools.count(1)
        self._router_id = f"{id(self):x}-{self._rng.getrandbits(32):08x}"
        self._demand = Demand(self._router_id, deployment_id)
        self._placement = Placement(
            deployment_id, self._registry, self._demand,
            dialing=lambda: bool(self._pool.dialing_first), ask_for_replicas=self._send_report,
            rng=self._rng, clock=clock, sleep=sleep, default_load_cost_s=default_load_cost_s,
            events=events,
        )
        self._report_task: asyncio.Task | None = None
        self._watch_task: asyncio.Task | None = None
        self._ready = asyncio.Event()  # pulsed whenever routable replicas may have changed
        self._closed = False

    # ---- public ------------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        args: tuple = (),
        kwargs: dict | None = None,
        *,
        model_id: str = "",
        http: HTTPRequest | None = None,
        trace_id: str = "",
        on_replica: Callable[[str], None] | None = None,
        stream: bool = False,
        grpc: GRPCRequest | None = None,
    ) -> Any:
        """Route one request, send it, and return its result (or raise the remote error).

        A reply that streams comes back as a ``ReplyStream`` (always so with ``stream``; an
        HTTP response whose body comes in pieces too); its slot on the replica stays taken
        until the stream ends. ``on_replica`` hears the replica it is sent to (the proxy's
        access log names it)."""
        self._start()
        started = self._clock()
        payload = encode_args(args, kwargs or {})
        for _ in range(SEND_ATTEMPTS):
            slot = self._placement.place_now(model_id) or await self._placement.wait(model_id)
            if on_replica is not None:
                on_replica(slot.view.replica_id)
            try:
                reply = await self._send(slot, method, payload, http, trace_id, stream, grpc)
                self._demand.answered(self._clock() - started)  # a stream: to its first part
            except NotSent:
                # Nothing ran. Stop placing on that connection now (the pool redials it) and
                # try another replica.
                if slot.view.running is slot.running:
                    slot.view.running = None
                    slot.view.changed()
                continue
            if stream and not isinstance(reply, ReplyStream):
                reply = ReplyStream.ended(reply)  # it ended before a first chunk
            if isinstance(reply, ReplyStream):
                where = f"{self.deployment_id.name}.{method}"
                reply.decode_item = functools.partial(decode_item, where)
                reply.decode_end = functools.partial(decode_result, where)
                return reply
            return decode_result(f"{self.deployment_id.name}.{method}", reply)
        raise ReplicaDiedError(slot.view.replica_id, "connection lost")

    async def call_replica(self, replica_id: str, method: str, *args: Any) -> Any:
        """Call one replica directly, bypassing the policy (model management uses this)."""
        view = self._registry.get(replica_id)
        if view is None or not view.routable:
            raise ReplicaDiedError(replica_id, "it is no longer serving")
        payload = encode_args(args, {})
        slot = Slot(view, view.running, "", view.reserve(""))
        self._demand.managing += 1  # not a request: the reports leave it out of the load
        try:
            reply = await self._send(slot, method, payload, None, "", False)
            return decode_result(f"{self.deployment_id.name}.{method}", reply)
        except NotSent:
            raise ReplicaDiedError(replica_id, "connection lost") from None
        finally:
            self._demand.managing -= 1

    async def wait_ready(self, timeout_s: float = 30.0) -> list[str]:
        """Wait until every listed replica is connected and reporting; return their ids."""
        self._start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            listed = self._registry.listed()
            if self._registry.version >= 0 and all(v.routable for v in listed):
                return [v.replica_id for v in listed]
            self._ready.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ReplicasNotReadyError(str(self.deployment_id), timeout_s)
            try:
                await asyncio.wait_for(self._ready.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    def replica_models(self) -> dict[str, dict[str, Any]]:
        """What this router believes each replica holds (for management and status)."""
        return {
            v.replica_id: {"loaded": sorted(v.loaded), "loading": sorted(v.state().loading)}
            for v in self._registry.routable()
        }

    def replica_addresses(self) -> dict[str, tuple[str, int]]:
        return {v.replica_id: v.info.address for v in self._registry.listed()}

    def sizes(self) -> dict[str, int]:
        """How many entries each per-model structure holds (bounded; tests check it)."""
        views = list(self._registry)
        return {
            "queued": len(self._placement.queue),
            "spill_debts": len(self._placement.spill),
            "reminders": sum(len(v.reminded) for v in views),
            "sent_loads": sum(len(v.sent_loads) for v in views),
            "demand_ids": len(self._demand),
        }

    async def close(self) -> None:
        self._closed = True
        for task in (self._watch_task, self._report_task):
            if task is not None:
                task.cancel()
        for waiting in self._placement.close():
            if not waiting.future.done():
                waiting.future.set_exception(ShuttingDownError())
        await self._pool.close()

    def _start(self) -> None:
        if self._watch_task is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._watch_task = loop.create_task(self._watch())
            self._report_task = loop.create_task(self._report_loop())

    # ---- reports -----------------------------------------------------------------------------

    def report(self) -> RouterReport:
        """What this router saw since its last report (and resets the counts)."""
        return self._demand.report(
            self._registry.routable(), len(self._placement.queue),
            self._placement.longest_queues(),
        )

    async def _report_loop(self) -> None:
        while not self._closed:
            await self._sleep(REPORT_S)
            self._send_report()
            self._events.shares(self._placement.fairness.shares(self._clock()))

    def _send_report(self) -> None:
        try:
            self._directory.report(self.report())
        except Exception:  # the controller is away: the next report says it all again
            logger.debug("reporting load for %s failed", self.deployment_id, exc_info=True)

    # ---- sending -----------------------------------------------------------------------------

    async def _send(
        self, slot: Slot, method: str, payload: bytes, http: HTTPRequest | None, trace_id: str,
        stream: bool, grpc: GRPCRequest | None = None,
    ) -> Result | ReplyStream:
        """Send one call on a reserved slot and wait for its reply; the slot ends with the
        reply, or with the stream when the reply streams."""
        request_id = next(self._ids)
        kept = False
        try:
            future = slot.running.call(
                Call(request_id, method, payload, slot.model_id, http, trace_id, stream, grpc)
            )
            try:
                reply = await future
            except asyncio.CancelledError:
                slot.running.cancel(request_id)
                raise
            if isinstance(reply, ReplyStream) and not reply.finished:
                reply.on_end = functools.partial(self._placement.release, slot)
                kept = True
            return reply
        finally:
            if not kept:
                self._placement.release(slot)

    # ---- replica set and connections ----------------------------------------------------------

    async def _watch(self) -> None:
        while not self._closed:
            try:
                replica_set = await self._directory.watch(
                    self.deployment_id, self._registry.version
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("watching replicas of %s failed; retrying", self.deployment_id)
                await self._sleep(0.5)
                continue
            self._apply(replica_set)

    def _apply(self, replica_set: ReplicaSet) -> None:
        first = self._registry.version < 0
        changes = self._registry.apply_set(replica_set)
        if changes is None:
            return  # stale or already applied
        added, dropped = changes
        for view in dropped:
            self._pool.drop(view)
        for view in added:
            self._pool.add(view)
        self._placement.configure()
        if first:
            self._placement.shed_first_burst()
        self._ready.set()
        self._placement.drain()

    def _on_ready(self, view: ReplicaView, running: ChannelReplica, first: object) -> None:
        if isinstance(first, ModelsUpdate):
            self._registry.apply_models(view, first)
        if view.listed and not self._closed:
            view.running = running
            view.changed()
        self._ready.set()
        self._placement.drain()

    def _on_update(self, view: ReplicaView, update: ModelsUpdate) -> None:
        if self._registry.apply_models(view, update):
            self._placement.models_changed(view)

    def _on_in_flight(self, view: ReplicaView, message: InFlight) -> None:
        if self._registry.apply_in_flight(view, message):
            self._placement.drain()

    def _on_lost(self, view: ReplicaView, running: ChannelReplica) -> None:
        if view.running is running:
            view.running = None
            view.others = {}  # a new connection is told again
            view.changed()
        self._ready.set()
        self._placement.drain()
