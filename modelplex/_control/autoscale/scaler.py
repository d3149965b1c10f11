"""What the controller knows for autoscaling: the routers' reports, kept over a window.

Routers report every half second (``RouterReport``): requests running and queued, requests
placed and how many of them missed the cache, the busiest model ids, and what each replica
holds. This module sums them per deployment over ``look_back_period_s`` and hands the pure
policy (``policy.decide``) its inputs. (What ``serve.status`` shows of the last minute is
``_control/figures.py``'s.) It also ranks replicas by what losing them would cost
(their hot models that no other replica holds, weighted by demand and load time), and says which
models to hand to which survivor before a replica stops.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .policy import CacheView, Decision, ScaleState, decide
from ..._config import AutoscalingConfig
from ..._messages import DeploymentID, ModelEvents, RouterReport
from ..._data.routing import rendezvous_order
from ..figures import REPORT_TTL_S
# Demand is kept this long at most, whatever the look-back (and for deployments that do not
# autoscale, whose windows ``step`` never trims): memory stays bounded.
DEMAND_KEEP_S = 600.0


@dataclass
class _Window:
    reports: dict[str, tuple[float, RouterReport]] = field(default_factory=dict)
    requests: deque = field(default_factory=deque)  # (time, running + queued over routers)
    demand: deque = field(default_factory=deque)  # (time, placed, misses, models, with a model)
    state: ScaleState | None = None
    loads: deque = field(default_factory=deque)  # (time, model id, seconds): every load


class Scaler:
    def __init__(self) -> None:
        self._windows: dict[DeploymentID, _Window] = {}

    def record(self, report: RouterReport, now: float) -> None:
        window = self._windows.setdefault(report.deployment_id, _Window())
        window.reports[report.router_id] = (now, report)
        if report.placed or report.models:
            window.demand.append(
                (now, report.placed, report.misses, report.models, report.with_model)
            )
        self._trim(window, now)

    @staticmethod
    def _trim(window: _Window, now: float) -> None:
        for series in (window.demand, window.loads):
            while series and series[0][0] < now - DEMAND_KEEP_S:
                series.popleft()
        gone = [r for r, (at, _) in window.reports.items() if now - at > DEMAND_KEEP_S]
        for router_id in gone:
            del window.reports[router_id]

    def models(self, deployment_id: DeploymentID, message: ModelEvents, now: float) -> None:
        """A replica's cache events (the working set's loads)."""
        window = self._windows.setdefault(deployment_id, _Window())
        for event in message.events:
            if event.kind == "loaded":
                window.loads.append((now, event.model_id, event.seconds or 0.0))

    def reset(self, deployment_id: DeploymentID) -> None:
        """Start the scaling decision over (its delays, its load samples)."""
        window = self._windows.get(deployment_id)
        if window is not None:
            window.state = None
            window.requests.clear()

    def forget(self, deployment_id: DeploymentID) -> None:
        self._windows.pop(deployment_id, None)

    def waiting(self, deployment_id: DeploymentID, now: float) -> int:
        """Requests queued at routers right now (a deployment at zero replicas needs one)."""
        window = self._windows.get(deployment_id)
        if window is None:
            return 0
        return sum(r.queued for at, r in window.reports.values() if now - at <= REPORT_TTL_S)

    def step(
        self, deployment_id: DeploymentID, config: AutoscalingConfig, current: int, now: float
    ) -> Decision:
        """Sample the load now and ask the policy for the next target."""
        window = self._windows.setdefault(deployment_id, _Window())
        for router_id in [r for r, (at, _) in window.reports.items() if now - at > REPORT_TTL_S]:
            del window.reports[router_id]
        load = sum(r.ongoing + r.queued for _, r in window.reports.values())
        window.requests.append((now, load))
        horizon = now - config.look_back_period_s
        for series in (window.requests, window.demand, window.loads):
            while series and series[0][0] < horizon:
                series.popleft()
        average = sum(v for _, v in window.requests) / len(window.requests)
        state = window.state if window.state is not None and window.state.target == current else ScaleState(current)
        cache = self._cache_view(window, config.look_back_period_s)
        decision = decide(config, state, average, now, cache)
        window.state = decision.state
        return decision

    def _cache_view(self, window: _Window, look_back_s: float) -> CacheView | None:
        """The hot models are those asked for again over the look-back (a first request would
        miss however much room there were), each worth its repeats times its load time; the
        replicas' loads say what reloads cost now: a load of a model already loaded in the
        look-back is a miss that more room would have saved."""
        named = sum(entry[4] for entry in window.demand)
        if not named:
            return None
        loads: dict[str, list[float]] = {}
        for _, model_id, seconds in window.loads:
            loads.setdefault(model_id, []).append(seconds)
        load_s: dict[str, float] = {}  # what each model takes to load, as its holders measured
        for models in self._held(window).values():
            for model_id, seconds in models.items():
                load_s[model_id] = max(seconds, load_s.get(model_id, 0.0))
        for model_id, times in loads.items():
            load_s.setdefault(model_id, max(times))
        known = sorted(load_s.values())
        typical = known[len(known) // 2] if known else 1.0
        per_s = 1.0 / max(look_back_s, 1e-3)
        again = sorted(
            ((n - 1) * load_s.get(m, typical) * per_s
             for m, n in self._demand(window).items() if n > 1),
            reverse=True,
        )
        reloads = [t for times in loads.values() for t in sorted(times)[1:]]
        slots = [r.slots for _, r in window.reports.values() if r.slots > 0]
        return CacheView(
            min(slots) if slots else -1, len(again), min(1.0, len(reloads) / named),
            sum(reloads) * per_s, tuple(again),
        )

    @staticmethod
    def _demand(window: _Window) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in window.demand:
            for model_id, count in entry[3]:
                counts[model_id] = counts.get(model_id, 0) + count
        return counts

    def _held(self, window: _Window) -> dict[str, dict[str, float]]:
        """replica id -> model id -> load seconds, from the freshest report naming it."""
        held: dict[str, dict[str, float]] = {}
        for _, report in sorted(window.reports.values(), key=lambda entry: entry[0]):
            for replica_id, models in report.held:
                held[replica_id] = dict(models)
        return held

    def stop_order(
        self, deployment_id: DeploymentID, running: list[str]
    ) -> tuple[list[str], dict[str, str]]:
        """Running replicas, cheapest to lose first, and why each costs what it does."""
        window = self._windows.get(deployment_id)
        if window is None:
            return [], {}
        held, demand = self._held(window), self._demand(window)
        costs: dict[str, float] = {}
        notes: dict[str, str] = {}
        for replica_id in running:
            models = held.get(replica_id, {})
            elsewhere = {m for r, ms in held.items() if r != replica_id and r in running for m in ms}
            only_here = [m for m in models if m not in elsewhere and demand.get(m, 0) > 0]
            costs[replica_id] = sum(demand[m] * max(models[m], 0.001) for m in only_here)
            if not models:
                notes[replica_id] = "it holds no model"
            elif not only_here:
                notes[replica_id] = f"its {len(models)} models are idle or also held elsewhere"
            else:
                notes[replica_id] = f"its hot models {', '.join(sorted(only_here)[:5])} move first"
        order = sorted(running, key=lambda r: (costs[r], len(held.get(r, {}))))
        return order, notes

    def hand_off(
        self,
        deployment_id: DeploymentID,
        leaving: str,
        keepers: list[str],
        assigned: dict[str, int] | None = None,
    ) -> list[tuple[str, str]]:
        """(model id, keeper) for each hot model only ``leaving`` holds, hottest first.

        A keeper takes a model only where it is among the hottest its slots would hold: its
        own models at least as hot, plus what it was handed already in the same scale-down
        (counted in ``assigned``, across every replica leaving), must leave it room. So a
        keeper serving colder models makes room for hot ones, and one serving hotter ones is
        left alone. A model goes to the first keeper in its rendezvous order with room."""
        window = self._windows.get(deployment_id)
        if window is None or not keepers:
            return []
        assigned = {} if assigned is None else assigned
        held, demand = self._held(window), self._demand(window)
        elsewhere = {m for r in keepers for m in held.get(r, {})}
        hot = [m for m in held.get(leaving, {}) if m not in elsewhere and demand.get(m, 0) > 0]
        hot.sort(key=lambda m: -demand[m])
        slots = [r.slots for _, r in window.reports.values() if r.slots > 0]
        if not slots:
            slots = [len(hot) + max((len(held.get(k, {})) for k in keepers), default=0)]

        def room(keeper: str, heat: int) -> bool:
            hotter = sum(1 for m in held.get(keeper, {}) if demand.get(m, 0) >= heat)
            return hotter + assigned.get(keeper, 0) < min(slots)

        moves = []
        for model_id in hot:
            keeper = next(
                (k for k in rendezvous_order(model_id, keepers) if room(k, demand[model_id])), None
            )
            if keeper is None:
                continue  # a colder one may still fit where this one did not
            assigned[keeper] = assigned.get(keeper, 0) + 1
            moves.append((model_id, keeper))
        return moves

