"""A router's view of its deployment's replicas: who is listed, who is connected, what each holds.

Two sources write to it, and both are versioned so that a late message cannot undo a newer one:
the controller's replica sets (``ReplicaSet.version``, per deployment) and each replica's model
pushes (``ModelsUpdate.version``, per replica). Anything older than what was applied is ignored.

A replica stays *listed* until the controller drops it, whatever happens to its connection: the
pool redials a listed replica that it lost, and the replica is routable again once it has said
what it holds. Counters of this router's own requests (``ongoing``, ``sent_loads``) live here too,
because the policy needs them beside what the replica reports.
"""

from __future__ import annotations

from typing import Iterator, Mapping

from .._config import TenantPolicy
from .._messages import InFlight, ModelsUpdate, ReplicaInfo, ReplicaSet
from .routing import ReplicaState

# Touch reminders remembered per replica; beyond this the oldest are forgotten.
MAX_REMINDERS = 1024


class ReplicaView:
    """What one router knows of one replica."""

    __slots__ = (
        "info", "running", "ongoing", "loaded", "loading", "has_room", "models_version",
        "sent_loads", "reminded", "listed", "slots", "others", "lane", "_state",
    )

    def __init__(self, info: ReplicaInfo) -> None:
        self.info = info
        self.running = None  # the RunningReplica while connected and reporting, else None
        self.ongoing = 0  # this router's requests on it, from placement until their result
        self.loaded: Mapping[str, float] = {}  # model id -> seconds its load took
        self.loading: frozenset[str] = frozenset()
        self.has_room = True
        self.models_version = -1
        self.sent_loads: dict[str, int] = {}  # model id -> requests sent that will load it
        self.reminded: dict[str, float] = {}  # model id -> when a Touch for it was last sent
        self.listed = True
        self.slots = -1  # models its caches keep (-1: no count limit, or not said yet)
        self.others: Mapping[str, int] = {}  # model id -> other routers' requests running there
        # The request whose model loads here before it runs, not counted in ``ongoing`` until
        # the model is loaded (``placement``'s load lane), or None.
        self.lane: object | None = None
        self._state: ReplicaState | None = None

    @property
    def replica_id(self) -> str:
        return self.info.replica_id

    @property
    def routable(self) -> bool:
        return self.listed and self.running is not None

    @property
    def saturated(self) -> bool:
        return self.ongoing >= self.info.max_ongoing

    def holds(self, model_id: str) -> bool:
        return model_id in self.loaded or model_id in self.loading or model_id in self.sent_loads

    def state(self) -> ReplicaState:
        """The policy's input, rebuilt only after something about this replica changed."""
        if self._state is None:
            loading = self.loading
            if self.sent_loads:
                loading = loading | frozenset(self.sent_loads)
            self._state = ReplicaState(
                replica_id=self.info.replica_id,
                ongoing=self.ongoing,
                max_ongoing=self.info.max_ongoing,
                loaded=frozenset(self.loaded),
                loading=loading,
                has_model_room=self.has_room,
                reported_loading=self.loading,
            )
        return self._state

    def changed(self) -> None:
        self._state = None

    def will_load(self, model_id: str) -> bool:
        return bool(model_id) and model_id not in self.loaded

    def reserve(self, model_id: str, counted: bool = True) -> bool:
        """Count one more request on this replica (``counted``: in ``ongoing``); True if it
        will load ``model_id`` here.

        A model it will load counts as held from this moment, so that no other request
        loads it elsewhere before the replica reports the load."""
        self.ongoing += counted
        loads = self.will_load(model_id)
        if loads:
            self.sent_loads[model_id] = self.sent_loads.get(model_id, 0) + 1
        self._state = None
        return loads

    def release(self, model_id: str, loads: bool, counted: bool = True) -> None:
        self.ongoing -= counted
        if loads:
            count = self.sent_loads.get(model_id, 1)
            if count <= 1:
                self.sent_loads.pop(model_id, None)
            else:
                self.sent_loads[model_id] = count - 1
        self._state = None

    def should_remind(self, model_id: str, now: float, every_s: float) -> bool:
        """Rate-limit Touch reminders to one per model per ``every_s``; bounded memory."""
        last = self.reminded.get(model_id)
        if last is not None and now - last < every_s:
            return False
        if last is None and len(self.reminded) >= MAX_REMINDERS:
            self.reminded.pop(next(iter(self.reminded)))
        self.reminded.pop(model_id, None)  # re-insert: the dict stays in reminder order
        self.reminded[model_id] = now
        return True


class ReplicaRegistry:
    """The replicas of one deployment, as one router sees them."""

    def __init__(self) -> None:
        self._views: dict[str, ReplicaView] = {}
        self.version = -1  # of the last replica set applied
        self.max_queued = -1
        self.max_replicas_per_model: int | None = None
        self.tenants = TenantPolicy()
        self.loads_models = False  # the deployment has a multiplexed loader

    def __iter__(self) -> Iterator[ReplicaView]:
        return iter(self._views.values())

    def __len__(self) -> int:
        return len(self._views)

    def get(self, replica_id: str) -> ReplicaView | None:
        return self._views.get(replica_id)

    def routable(self) -> list[ReplicaView]:
        return [v for v in self._views.values() if v.routable]

    def listed(self) -> list[ReplicaView]:
        return [v for v in self._views.values() if v.listed]

    def apply_set(self, replica_set: ReplicaSet) -> tuple[list[ReplicaView], list[ReplicaView]] | None:
        """Apply a newer replica set; return (added, dropped) views, or None if it was stale.

        Dropped views leave the registry at once; the caller finishes what runs on them."""
        if replica_set.version <= self.version:
            return None
        self.version = replica_set.version
        self.max_queued = replica_set.max_queued
        self.max_replicas_per_model = replica_set.max_replicas_per_model
        self.tenants = replica_set.tenants or TenantPolicy()
        self.loads_models = replica_set.loads_models
        current = {info.replica_id: info for info in replica_set.replicas}
        dropped = [v for rid, v in self._views.items() if rid not in current]
        for view in dropped:
            view.listed = False
            del self._views[view.replica_id]
        added = []
        for replica_id, info in current.items():
            if replica_id not in self._views:
                view = ReplicaView(info)
                self._views[replica_id] = view
                added.append(view)
        return added, dropped

    @staticmethod
    def apply_models(view: ReplicaView, update: ModelsUpdate) -> bool:
        """Apply a replica's model push if it is newer than the last one; True if applied."""
        if update.version <= view.models_version:
            return False
        view.models_version = update.version
        view.loaded = dict(update.loaded)
        view.loading = frozenset(update.loading)
        view.has_room = update.has_room
        view.slots = update.slots
        view._state = None
        return True

    @staticmethod
    def apply_in_flight(view: ReplicaView, message: InFlight) -> bool:
        """What other routers run on ``view`` now; True if it changed."""
        counts = dict(message.counts)
        if counts == view.others:
            return False
        view.others = counts
        return True

    def others_running(self, model_id: str) -> int:
        """Requests for ``model_id`` that other routers run on this deployment's replicas,
        as the replicas last said."""
        return sum(v.others.get(model_id, 0) for v in self._views.values() if v.routable)

    def load_cost(self, model_id: str, default_s: float) -> float:
        """What one more load of ``model_id`` costs, as its holders measured it.

        Derived from the replicas' own reports, so it needs no per-model memory here: a model
        is only ever spilled while some replica holds it, and that replica timed its load."""
        costs = [v.loaded[model_id] for v in self._views.values() if model_id in v.loaded]
        return max(costs) if costs else default_s
