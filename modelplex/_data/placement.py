"""Where a router's requests go: placed now, or queued until the policy can place them.

``Placement`` asks the pure policy (``routing.choose_replica``) over the registry's view of
each routable replica, reserves a ``Slot`` on the replica chosen, and keeps the requests it
cannot place yet in the ``WaitQueue``, grouped by model id. Which group gets the next free slot
is the fairness policy's (``fairness.Fairness``: least service first, or arrival order), under
the deployment's ``TenantPolicy``: a model id at its ``max_ongoing_requests_per_model`` waits
(counting what other routers run, as the replicas say: ``InFlight``), and one past its
``max_queued_requests_per_model`` is refused (429). Past the deployment's ``max_queued``,
fairness refuses the newest request of the longest backlog rather than a newcomer (503).

A cold model's load holds no slot another model could use: in a deployment with a loader,
the request that loads a model on a replica goes into that replica's *load lane* (one each)
and counts against ``max_ongoing_requests`` only once the replica reports the model loaded;
the model's other requests wait here while the replica says it is loading it.

Waiting requests are placed again whenever the router says something changed (``drain``: a
reply, a push, a new replica set) and on a short tick while any wait, so that their waiting
time adds up toward a spill (``SpillMeter``), and busy holders are reminded of the models in
demand here (``Touch``).
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
from typing import Callable

from .._errors import BackPressureError
from .._events import RouterEvents
from .._messages import DeploymentID
from .demand import Demand
from .fairness import Fairness
from .pool import RunningReplica, Sleep
from .queue import Group, Waiting, WaitQueue
from .registry import ReplicaRegistry, ReplicaView
from .routing import Choice, Reason, SpillMeter, choose_replica

__all__ = ["Placement", "Slot"]

TICK_S = 0.01
# How often a router reminds a busy holder that requests wait for one of its models.
REMIND_S = 0.05
# Spill debts kept at most; idle ones are dropped first (see SpillMeter).
MAX_SPILL_DEBTS = 4096


# The most a per-model 429's Retry-After says, in seconds.
MAX_RETRY_AFTER_S = 60


class Slot:
    """A request's place on one replica, from placement until its result arrives."""

    __slots__ = ("view", "running", "model_id", "loads", "estimate", "started", "counted")

    def __init__(
        self, view: ReplicaView, running: RunningReplica, model_id: str, loads: bool,
        estimate: float | None = None, started: float = 0.0,
    ) -> None:
        self.view = view
        self.running = running
        self.model_id = model_id
        self.loads = loads
        self.estimate = estimate  # what fairness charged for it (None: not a request's slot)
        self.started = started
        self.counted = True  # in its replica's ``ongoing`` (False while in the load lane)


class Placement:
    """The placing half of one router; the router owns the connections and the sending."""

    def __init__(
        self,
        deployment_id: DeploymentID,
        registry: ReplicaRegistry,
        demand: Demand,
        *,
        dialing: Callable[[], bool],
        ask_for_replicas: Callable[[], None],
        rng: random.Random,
        clock: Callable[[], float],
        sleep: Sleep,
        default_load_cost_s: float,
        events: RouterEvents,
    ) -> None:
        self._deployment_id = deployment_id
        self._registry = registry
        self._demand = demand
        # Whether some listed replica has not been dialled yet (no cold placement until then).
        self._dialing = dialing
        # The router's report, sent at once when a request waits where no replica runs.
        self._ask_for_replicas = ask_for_replicas
        self._rng = rng
        self._clock = clock
        self._sleep = sleep
        self._default_load_cost_s = default_load_cost_s
        self._events = events
        self.queue = WaitQueue()
        self.fairness = Fairness(registry.tenants)
        self.spill = SpillMeter(max_entries=MAX_SPILL_DEBTS)
        self._tick_task: asyncio.Task | None = None
        self._closed = False

    def close(self) -> list:
        """Stop ticking; the requests still waiting, for the router to fail."""
        self._closed = True
        if self._tick_task is not None:
            self._tick_task.cancel()
        return self.queue.clear()

    def configure(self) -> None:
        """A new replica set: its tenant policy applies from now on (counters are kept)."""
        self.fairness.configure(self._registry.tenants)

    def release(self, slot: Slot) -> None:
        """A request's reply ended: its slot is free, and a waiting one may take it."""
        if slot.view.lane is slot:
            slot.view.lane = None
        slot.view.release(slot.model_id, slot.loads, slot.counted)
        if slot.estimate is not None:
            now = self._clock()
            seconds = max(0.0, now - slot.started)
            self.fairness.finished(slot.model_id, seconds, now)
            self._events.served(slot.model_id, seconds)
        self.drain()

    def _choose(self, model_id: str, now: float) -> Choice:
        views = self._registry.routable()
        debt = self.spill.debt(model_id, now) if model_id else 0.0
        return choose_replica(
            [v.state() for v in views],
            model_id,
            rng=self._rng,
            wait_debt_s=debt,
            load_cost_s=self._registry.load_cost(model_id, self._default_load_cost_s),
            max_replicas_per_model=self._registry.max_replicas_per_model,
            wait_for_loads=self._registry.loads_models,
        )

    def can_place(self) -> bool:
        """Whether placing anything may succeed now (cheap: no policy call)."""
        if self._dialing():
            # Until every listed replica has been dialled once, a cold model's home may be
            # missing from the view, and this router would disagree with the others.
            return False
        return any(not v.saturated for v in self._registry.routable())

    def capped(self, model_id: str) -> bool:
        """``model_id`` runs ``max_ongoing_requests_per_model`` requests already: this router's
        own, and other routers' as the replicas last said."""
        cap = self._registry.tenants.max_ongoing_per_model
        if cap < 0 or not model_id:
            return False
        mine = self.fairness.running(model_id)
        return mine >= cap or mine + self._registry.others_running(model_id) >= cap

    def place_now(self, model_id: str) -> Slot | None:
        if self.queue or not self.can_place() or self.capped(model_id):
            return None  # behind those already waiting: the fairness policy orders them
        now = self._clock()
        choice = self._choose(model_id, now)
        if choice.replica_id is None:
            return None
        self._events.waited(0.0)
        return self._reserve(choice, model_id, now)

    def _reserve(self, choice: Choice, model_id: str, now: float) -> Slot:
        if choice.reason is Reason.SPILL:
            self.spill.reset(model_id)
        view = self._registry.get(choice.replica_id)
        assert view is not None and view.running is not None
        lane = self._registry.loads_models and view.lane is None and view.will_load(model_id)
        loads = view.reserve(model_id, counted=not lane)
        self._demand.count(model_id, loads)
        duplicate = loads and any(
            model_id in v.loaded for v in self._registry.routable() if v is not view
        )
        self._events.placed(choice.reason.value, loads, duplicate)
        estimate = self.fairness.started(model_id)
        slot = Slot(view, view.running, model_id, loads, estimate, now)
        if lane:
            slot.counted, view.lane = False, slot
        return slot

    def models_changed(self, view: ReplicaView) -> None:
        """A replica said what it holds: the request in its load lane counts as running once
        its model is loaded, and waiting requests may go."""
        lane = view.lane
        if isinstance(lane, Slot) and lane.model_id in view.loaded:
            view.lane, lane.counted = None, True
            view.ongoing += 1
            view.changed()
        self.drain()

    async def wait(self, model_id: str) -> Slot:
        self._admit(model_id)
        now = self._clock()
        loop = asyncio.get_running_loop()
        waiting, waited = self.queue.push(model_id, loop.create_future(), now)
        self.fairness.queued(model_id)
        self._events.queued(len(self.queue))
        self._accrue(waiting.group, waited, now)
        if len(self.queue) == 1 and self._registry.version >= 0 and not len(self._registry):
            self._ask_for_replicas()  # none to serve it: ask for one at once
        self.drain()
        if self.queue and self._tick_task is None and not self._closed:
            self._tick_task = loop.create_task(self._tick())
        try:
            return await waiting.future
        except BaseException:
            future = waiting.future
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(future.result())  # placed, but the caller left: free the slot
            else:
                now = self._clock()
                self._accrue(waiting.group, self._unqueue(waiting, now), now)
                self._events.queued(len(self.queue))
            raise

    def _admit(self, model_id: str) -> None:
        """Refuse a request its model id's backlog, or the deployment's, has no room for.

        A full deployment queue under fairness makes room by refusing the newest request of
        the longest backlog (per weight), unless that is the newcomer's own."""
        tenants = self._registry.tenants
        per_model = tenants.max_queued_per_model
        if per_model >= 0 and model_id:
            group = self.queue.group(model_id)
            queued = len(group) if group is not None else 0
            if queued >= per_model:
                self._events.shed(model_id, "model_queue")
                raise BackPressureError(
                    str(self._deployment_id), queued, per_model, model_id,
                    self._retry_after(model_id, queued),
                )
        limit = self._registry.max_queued
        if not 0 <= limit <= len(self.queue):
            return
        if tenants.fair:
            weight = self.fairness.weight
            longest = self.queue.longest(weight)
            own = self.queue.group(model_id)
            mine = (len(own) + 1 if own is not None else 1) / weight(model_id)
            if longest is not None and longest.model_id != model_id and len(longest) / weight(longest.model_id) > mine:
                self._shed(self.queue.pop_newest(longest), limit)
                return
        self._events.shed(model_id, "queue")
        raise BackPressureError(str(self._deployment_id), len(self.queue), limit)

    def _shed(self, waiting: Waiting, limit: int) -> None:
        """Refuse a waiting request (already out of the queue) for the deployment's bound."""
        self.fairness.unqueued(waiting.model_id)
        if not waiting.future.done():
            self._events.shed(waiting.model_id, "queue")
            waiting.future.set_exception(
                BackPressureError(str(self._deployment_id), len(self.queue), limit)
            )

    def _retry_after(self, model_id: str, queued: int) -> int:
        """When the model id's backlog should have room again: its queue at its pace."""
        pace = self.fairness.cost(model_id) / max(1, self.fairness.running(model_id))
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil(queued * pace)))

    def _unqueue(self, waiting: Waiting, now: float) -> float:
        if not waiting.queued:
            return 0.0
        self.fairness.unqueued(waiting.model_id)
        return self.queue.remove(waiting, now)

    def drain(self) -> None:
        """Place as many waiting requests as the policy allows, in the fairness order.

        Stops as soon as no replica has a free slot; a group whose head cannot be placed (its
        holders busy, its model at its cap) is passed over, and only models some busy replica
        holds, or capped ones, can be (see ``queue``)."""
        if not self.queue or not self.can_place():
            return
        now = self._clock()
        order = self.fairness.order()
        try:
            for model_id in order:
                group = self.queue.group(model_id)
                if group is None or not group.members or self.capped(model_id):
                    continue
                if not self._place_head(group, now):
                    return
        finally:
            order.close()
            self._events.queued(len(self.queue))

    def _place_head(self, group: Group, now: float) -> bool:
        """Place the group's oldest request if the policy allows; False once nothing more can
        be placed (the drain can stop)."""
        waited = group.waited(now)
        choice = self._choose(group.model_id, now)
        group.reason = choice.reason
        self._accrue(group, waited, now)
        if choice.replica_id is None:
            return choice.reason is not Reason.WAIT_BUSY and choice.reason is not Reason.NO_REPLICAS
        waiting = group.head()
        slot = self._reserve(choice, group.model_id, now)
        self._unqueue(waiting, now)
        self._events.waited(max(0.0, now - waiting.since))
        waiting.future.set_result(slot)
        return self.can_place()

    def longest_queues(self, n: int = 5) -> tuple[tuple[str, int], ...]:
        """The ``n`` model ids with the most requests waiting here, most first."""
        groups = heapq.nlargest(n, self.queue.groups(), key=len)
        return tuple((g.model_id, len(g)) for g in groups)

    def _accrue(self, group: Group | None, seconds: float, now: float) -> None:
        """Waiting counts toward a spill while the policy last said the model's holders are
        saturated (not while a load of it is under way, or before it was looked at)."""
        if seconds > 0 and group is not None and group.reason is Reason.WAIT_SATURATED:
            self.spill.add(group.model_id, seconds, now)

    def _remind(self, now: float) -> None:
        """Tell busy holders which of their models requests here wait for, so that their LRU
        does not drop a model in demand because its requests queue here rather than run there.
        Costs the models held, not the requests queued."""
        for view in self._registry.routable():
            if not view.saturated:
                continue
            for model_id in list(view.loaded):
                if self.queue.group(model_id) is not None and view.should_remind(
                    model_id, now, REMIND_S
                ):
                    view.running.touch(model_id)

    async def _tick(self) -> None:
        try:
            while self.queue and not self._closed:
                await self._sleep(TICK_S)
                now = self._clock()
                self._remind(now)
                self.drain()
            self.spill.forget_idle(self._clock())
        finally:
            self._tick_task = None

    def shed_first_burst(self) -> None:
        """Requests that arrived before the first replica set queued with no bound known: keep
        what the replicas can run plus the bounds, and refuse the rest as any later arrival
        over a bound would be refused (the longest backlogs first, under fairness)."""
        tenants = self._registry.tenants
        capacity = sum(v.info.max_ongoing for v in self._registry.listed())
        if tenants.max_queued_per_model >= 0:
            cap = tenants.max_ongoing_per_model
            keep = tenants.max_queued_per_model + (capacity if cap < 0 else min(cap, capacity))
            for group in self.queue.groups():
                while group.model_id and len(group) > keep:
                    waiting = self.queue.pop_newest(group)
                    self.fairness.unqueued(waiting.model_id)
                    self._events.shed(waiting.model_id, "model_queue")
                    waiting.future.set_exception(BackPressureError(
                        str(self._deployment_id), len(group), tenants.max_queued_per_model,
                        group.model_id,
                    ))
        limit = self._registry.max_queued
        if limit < 0:
            return
        keep = limit + capacity
        if not tenants.fair:
            shed = self.queue.shed(keep)
        else:
            shed = []
            while len(self.queue) > keep:
                shed.append(self.queue.pop_newest(self.queue.longest(self.fairness.weight)))
        for waiting in shed:
            self._shed(waiting, limit)
