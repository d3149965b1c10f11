"""The router of one deployment in one process: places requests, sends them, returns results.

It composes four parts, each with one job:

- the policy, ``_routing.choose_replica``: pure, where one request goes;
- the ``ReplicaRegistry``: what this router knows of each replica, from versioned updates;
- the ``WaitQueue``: requests the policy cannot place yet, grouped by model, bounded;
- the ``Pool``: a connection per listed replica, redialled when lost, seen as ``RunningReplica``.

Requests that wait are placed again whenever something changes (a reply, a push, a new replica
set) and on a short tick while any wait, so that waiting time adds up toward a spill. The clock,
the sleep and the random source are injected, so the tests drive time themselves.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import pickle
import random
import time
from typing import Any, Awaitable, Callable, Protocol

import cloudpickle

from .._errors import (
    BackPressureError,
    RemoteError,
    RemoteTraceback,
    ReplicaDiedError,
    ReplicasNotReadyError,
    ShuttingDownError,
    UnserializableArgumentsError,
)
from .._events import NO_ROUTER_EVENTS, RouterEvents
from .._messages import (
    Call,
    DeploymentID,
    HTTPRequest,
    ModelsUpdate,
    ReplicaSet,
    Result,
    RouterReport,
)
from .._routing import Choice, Reason, SpillMeter, choose_replica
from .._streams import ReplyStream
from .pool import ChannelReplica, Dialer, NotSent, Pool, RunningReplica, Sleep
from .queue import Group, WaitQueue
from .registry import ReplicaRegistry, ReplicaView

logger = logging.getLogger("modelplex.router")

TICK_S = 0.01
# How often a router reminds a busy holder that requests wait for one of its models.
REMIND_S = 0.05
SEND_ATTEMPTS = 3
# Spill debts kept at most; idle ones are dropped first (see SpillMeter).
MAX_SPILL_DEBTS = 4096
# How often a router tells the controller what load and demand it sees (for autoscaling).
REPORT_S = 0.5
# Model ids counted between two reports, at most, and how many of them a report names.
MAX_DEMAND_IDS = 4096
REPORTED_IDS = 64


def _encode_args(args: tuple, kwargs: dict) -> bytes:
    try:
        return cloudpickle.dumps((args, kwargs), protocol=5)
    except Exception as exc:
        raise UnserializableArgumentsError(
            f"the arguments of this call cannot be serialized: {exc}"
        ) from exc


class ReplicaDirectory(Protocol):
    """Where a router learns the replicas of a deployment (the controller, near or far), and
    tells it what load it sees."""

    async def watch(self, deployment_id: DeploymentID, known_version: int) -> ReplicaSet: ...

    def report(self, report: RouterReport) -> None: ...


class Slot:
    """A request's place on one replica, from placement until its result arrives."""

    __slots__ = ("view", "running", "model_id", "loads")

    def __init__(self, view: ReplicaView, running: RunningReplica, model_id: str, loads: bool) -> None:
        self.view = view
        self.running = running
        self.model_id = model_id
        self.loads = loads


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
        self._queue = WaitQueue()
        self._spill = SpillMeter(max_entries=MAX_SPILL_DEBTS)
        self._pool = Pool(
            dial, on_ready=self._on_ready, on_update=self._on_update, on_lost=self._on_lost,
            sleep=sleep, rng=self._rng,
        )
        self._ids = itertools.count(1)
        self._router_id = f"{id(self):x}-{self._rng.getrandbits(32):08x}"
        self._placed = 0
        self._misses = 0
        self._demand: dict[str, int] = {}
        self._report_task: asyncio.Task | None = None
        self._watch_task: asyncio.Task | None = None
        self._tick_task: asyncio.Task | None = None
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
    ) -> Any:
        """Route one request, send it, and return its result (or raise the remote error).

        A reply that streams comes back as a ``ReplyStream`` (always so with ``stream``; an
        HTTP response whose body comes in pieces too); its slot on the replica stays taken
        until the stream ends. ``on_replica`` hears the replica it is sent to (the proxy's
        access log names it)."""
        self._start()
        payload = _encode_args(args, kwargs or {}) if (args or kwargs) else b""
        for _ in range(SEND_ATTEMPTS):
            slot = self._place_now(model_id) or await self._wait(model_id)
            if on_replica is not None:
                on_replica(slot.view.replica_id)
            try:
                reply = await self._send(slot, method, payload, http, trace_id, stream)
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
                reply.decode_item = functools.partial(self._decode_item, method)
                reply.decode_end = functools.partial(self._decode, method=method)
                return reply
            return self._decode(reply, method)
        raise ReplicaDiedError(slot.view.replica_id, "connection lost")

    async def call_replica(self, replica_id: str, method: str, *args: Any) -> Any:
        """Call one replica directly, bypassing the policy (model management uses this)."""
        view = self._registry.get(replica_id)
        if view is None or not view.routable:
            raise ReplicaDiedError(replica_id, "it is no longer serving")
        payload = _encode_args(args, {}) if args else b""
        slot = Slot(view, view.running, "", view.reserve(""))
        try:
            return self._decode(await self._send(slot, method, payload, None, "", False), method)
        except NotSent:
            raise ReplicaDiedError(replica_id, "connection lost") from None

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
            "queued": len(self._queue),
            "spill_debts": len(self._spill),
            "reminders": sum(len(v.reminded) for v in views),
            "sent_loads": sum(len(v.sent_loads) for v in views),
            "demand_ids": len(self._demand),
        }

    async def close(self) -> None:
        self._closed = True
        for task in (self._watch_task, self._tick_task, self._report_task):
            if task is not None:
                task.cancel()
        for waiting in self._queue.clear():
            if not waiting.future.done():
                waiting.future.set_exception(ShuttingDownError())
        await self._pool.close()

    # ---- placement ---------------------------------------------------------------------------

    def _start(self) -> None:
        if self._watch_task is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._watch_task = loop.create_task(self._watch())
            self._report_task = loop.create_task(self._report_loop())

    # ---- reports -----------------------------------------------------------------------------

    def _count(self, model_id: str, loads: bool) -> None:
        self._placed += 1
        self._misses += loads
        if model_id:
            demand = self._demand
            demand[model_id] = demand.get(model_id, 0) + 1
            if len(demand) > MAX_DEMAND_IDS:  # keep the busiest quarter: bounded by design
                kept = sorted(demand.items(), key=lambda kv: -kv[1])[: MAX_DEMAND_IDS // 4]
                self._demand = dict(kept)

    def report(self) -> RouterReport:
        """What this router saw since its last report (and resets the counts)."""
        views = self._registry.routable()
        top = sorted(self._demand.items(), key=lambda kv: -kv[1])[:REPORTED_IDS]
        report = RouterReport(
            router_id=self._router_id,
            deployment_id=self.deployment_id,
            ongoing=sum(v.ongoing for v in views),
            queued=len(self._queue),
            placed=self._placed,
            misses=self._misses,
            models=tuple(top),
            held=tuple((v.replica_id, tuple(v.loaded.items())) for v in views),
            slots=max((v.slots for v in views), default=-1),
        )
        self._placed = self._misses = 0
        self._demand = {}
        return report

    async def _report_loop(self) -> None:
        while not self._closed:
            await self._sleep(REPORT_S)
            self._send_report()

    def _send_report(self) -> None:
        try:
            self._directory.report(self.report())
        except Exception:  # the controller is away: the next report says it all again
            logger.debug("reporting load for %s failed", self.deployment_id, exc_info=True)

    def _choose(self, model_id: str, now: float) -> Choice:
        views = self._registry.routable()
        debt = self._spill.debt(model_id, now) if model_id else 0.0
        return choose_replica(
            [v.state() for v in views],
            model_id,
            rng=self._rng,
            wait_debt_s=debt,
            load_cost_s=self._registry.load_cost(model_id, self._default_load_cost_s),
            max_replicas_per_model=self._registry.max_replicas_per_model,
        )

    def _can_place(self) -> bool:
        """Whether placing anything may succeed now (cheap: no policy call)."""
        if self._pool.dialing_first:
            # Until every listed replica has been dialled once, a cold model's home may be
            # missing from the view, and this router would disagree with the others.
            return False
        return any(not v.saturated for v in self._registry.routable())

    def _place_now(self, model_id: str) -> Slot | None:
        if self._queue or not self._can_place():
            return None  # keep FIFO order behind those already waiting
        choice = self._choose(model_id, self._clock())
        if choice.replica_id is None:
            return None
        return self._reserve(choice, model_id)

    def _reserve(self, choice: Choice, model_id: str) -> Slot:
        if choice.reason is Reason.SPILL:
            self._spill.reset(model_id)
        view = self._registry.get(choice.replica_id)
        assert view is not None and view.running is not None
        loads = view.reserve(model_id)
        self._count(model_id, loads)
        duplicate = loads and any(
            model_id in v.loaded for v in self._registry.routable() if v is not view
        )
        self._events.placed(choice.reason.value, loads, duplicate)
        return Slot(view, view.running, model_id, loads)

    async def _wait(self, model_id: str) -> Slot:
        limit = self._registry.max_queued
        if 0 <= limit <= len(self._queue):
            raise BackPressureError(str(self.deployment_id), len(self._queue), limit)
        now = self._clock()
        loop = asyncio.get_running_loop()
        waiting, waited = self._queue.push(model_id, loop.create_future(), now)
        self._events.queued(len(self._queue))
        self._accrue(waiting.group, waited, now)
        if len(self._queue) == 1 and self._registry.version >= 0 and not len(self._registry):
            self._send_report()  # none to serve it: ask for one at once
        self._drain()
        if self._queue and self._tick_task is None and not self._closed:
            self._tick_task = loop.create_task(self._tick())
        try:
            return await waiting.future
        except BaseException:
            future = waiting.future
            if future.done() and not future.cancelled() and future.exception() is None:
                slot = future.result()  # placed, but the caller left: free the slot
                slot.view.release(slot.model_id, slot.loads)
                self._drain()
            else:
                now = self._clock()
                self._accrue(waiting.group, self._queue.remove(waiting, now), now)
                self._events.queued(len(self._queue))
            raise

    def _drain(self) -> None:
        """Place as many waiting requests as the policy allows, oldest group first.

        Stops as soon as no replica has a free slot; a group whose head cannot be placed is
        skipped, and only models some busy replica holds can be skipped (see ``queue``)."""
        if not self._queue or not self._can_place():
            return
        now = self._clock()
        groups = self._queue.groups()
        try:
            for group in groups:
                if not self._place_group(group, now):
                    return
        finally:
            groups.close()
            self._events.queued(len(self._queue))

    def _place_group(self, group: Group, now: float) -> bool:
        """Place the group's requests in order while the policy allows; False once no replica
        has room left (the drain can stop)."""
        while group.members:
            waiting = group.head()
            waited = group.waited(now)
            choice = self._choose(group.model_id, now)
            group.reason = choice.reason
            self._accrue(group, waited, now)
            if choice.replica_id is None:
                return choice.reason is not Reason.WAIT_BUSY and choice.reason is not Reason.NO_REPLICAS
            self._queue.remove(waiting, now)
            waiting.future.set_result(self._reserve(choice, group.model_id))
            if not self._can_place():
                return False
        return True

    def _accrue(self, group: Group | None, seconds: float, now: float) -> None:
        """Waiting counts toward a spill while the policy last said the model's holders are
        saturated (not while a load of it is under way, or before it was looked at)."""
        if seconds > 0 and group is not None and group.reason is Reason.WAIT_SATURATED:
            self._spill.add(group.model_id, seconds, now)

    def _remind(self, now: float) -> None:
        """Tell busy holders which of their models requests here wait for, so that their LRU
        does not drop a model in demand because its requests queue here rather than run there.
        Costs the models held, not the requests queued."""
        for view in self._registry.routable():
            if not view.saturated:
                continue
            for model_id in list(view.loaded):
                if self._queue.group(model_id) is not None and view.should_remind(
                    model_id, now, REMIND_S
                ):
                    view.running.touch(model_id)

    async def _tick(self) -> None:
        try:
            while self._queue and not self._closed:
                await self._sleep(TICK_S)
                now = self._clock()
                self._remind(now)
                self._drain()
            self._spill.forget_idle(self._clock())
        finally:
            self._tick_task = None

    # ---- sending -----------------------------------------------------------------------------

    async def _send(
        self, slot: Slot, method: str, payload: bytes, http: HTTPRequest | None, trace_id: str,
        stream: bool,
    ) -> Result | ReplyStream:
        """Send one call on a reserved slot and wait for its reply; the slot ends with the
        reply, or with the stream when the reply streams."""
        request_id = next(self._ids)
        kept = False
        try:
            future = slot.running.call(
                Call(request_id, method, payload, slot.model_id, http, trace_id, stream)
            )
            try:
                reply = await future
            except asyncio.CancelledError:
                slot.running.cancel(request_id)
                raise
            if isinstance(reply, ReplyStream) and not reply.finished:
                reply.on_end = functools.partial(self._end_slot, slot)
                kept = True
            return reply
        finally:
            if not kept:
                self._end_slot(slot)

    def _end_slot(self, slot: Slot) -> None:
        slot.view.release(slot.model_id, slot.loads)
        self._drain()

    def _decode_item(self, method: str, payload: bytes) -> Any:
        try:
            return pickle.loads(payload)
        except Exception as exc:
            raise RemoteError(
                "UnpicklingError",
                f"an item streamed by {self.deployment_id.name}.{method} cannot be unpickled "
                f"here: {type(exc).__name__}: {exc}",
            ) from None

    def _decode(self, result: Result, method: str) -> Any:
        try:
            value = pickle.loads(result.payload)
        except Exception as exc:
            raise RemoteError(
                "UnpicklingError",
                f"the result of {self.deployment_id.name}.{method} cannot be unpickled here: "
                f"{type(exc).__name__}: {exc}",
            ) from None
        if result.ok:
            return value
        if result.traceback and isinstance(value, BaseException):
            value.__cause__ = RemoteTraceback(result.traceback)
        raise value

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
        if first:
            self._shed_first_burst()
        self._ready.set()
        self._drain()

    def _shed_first_burst(self) -> None:
        """Requests that arrived before the first replica set queued with no bound known: keep
        what the replicas can run plus ``max_queued``, and refuse the rest as any later
        arrival over the bound would be refused."""
        limit = self._registry.max_queued
        if limit < 0:
            return
        capacity = sum(v.info.max_ongoing for v in self._registry.listed())
        for waiting in self._queue.shed(limit + capacity):
            if not waiting.future.done():
                waiting.future.set_exception(
                    BackPressureError(str(self.deployment_id), len(self._queue), limit)
                )

    def _on_ready(self, view: ReplicaView, running: ChannelReplica, first: object) -> None:
        if isinstance(first, ModelsUpdate):
            self._registry.apply_models(view, first)
        if view.listed and not self._closed:
            view.running = running
            view.changed()
        self._ready.set()
        self._drain()

    def _on_update(self, view: ReplicaView, update: ModelsUpdate) -> None:
        if self._registry.apply_models(view, update):
            self._drain()

    def _on_lost(self, view: ReplicaView, running: ChannelReplica) -> None:
        if view.running is running:
            view.running = None
            view.changed()
        self._ready.set()
        self._drain()
