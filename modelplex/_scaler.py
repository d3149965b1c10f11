"""What the controller knows for autoscaling: the routers' reports, kept over a window.

Routers report every half second (``RouterReport``): requests running and queued, requests
placed and how many of them missed the cache, the busiest model ids, and what each replica
holds. This module sums them per deployment over ``look_back_period_s`` and hands the pure
policy (``_autoscale.decide``) its inputs, and ``serve.status`` the last minute's hit rate and
load times (``stats``). It also ranks replicas by what losing them would cost
(their hot models that no other replica holds, weighted by demand and load time), and says which
models to hand to which survivor before a replica stops.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from ._autoscale import CacheView, Decision, ScaleState, decide
from ._config import AutoscalingConfig
from ._messages import DeploymentID, RouterReport
from ._routing import rendezvous_order

# A router silent this long is gone (its process ended): its last report no longer counts.
REPORT_TTL_S = 2.0
# Demand is kept this long at most, whatever the look-back (and for deployments that do not
# autoscale, whose windows ``step`` never trims): memory stays bounded.
DEMAND_KEEP_S = 600.0
# Models that make up this share of the demand are "hot".
HOT_SHARE = 0.9
# What ``stats`` summarises: the last minute.
STATS_WINDOW_S = 60.0


@dataclass(frozen=True)
class Stats:
    """A deployment over the last ``STATS_WINDOW_S``, from its routers' reports."""

    ongoing: int  # requests running on replicas, over routers, now
    queued: int  # requests waiting at routers, now
    requests: int  # requests placed
    hit_rate: float | None  # share placed on a replica that held the model (None: none placed)
    loads: int  # model loads that finished
    load_p50_s: float | None
    load_p99_s: float | None


@dataclass
class _Window:
    reports: dict[str, tuple[float, RouterReport]] = field(default_factory=dict)
    requests: deque = field(default_factory=deque)  # (time, running + queued over routers)
    demand: deque = field(default_factory=deque)  # (time, placed, misses, models)
    state: ScaleState | None = None
    minute: deque = field(default_factory=deque)  # (time, placed, misses) for stats
    loads: deque = field(default_factory=deque)  # (time, (replica, model, load seconds))
    held_at: dict = field(default_factory=dict)  # (replica, model, load seconds) -> last seen


class Scaler:
    def __init__(self) -> None:
        self._windows: dict[DeploymentID, _Window] = {}

    def record(self, report: RouterReport, now: float) -> None:
        window = self._windows.setdefault(report.deployment_id, _Window())
        window.reports[report.router_id] = (now, report)
        if report.placed or report.models:
            window.demand.append((now, report.placed, report.misses, report.models))
        if report.placed:
            window.minute.append((now, report.placed, report.misses))
        # A load is a (replica, model, load time) first seen: several routers report the same
        # one, and a model loaded again has another load time.
        for replica_id, models in report.held:
            for model_id, load_s in models:
                key = (replica_id, model_id, load_s)
                if key not in window.held_at:
                    window.loads.append((now, key))
                window.held_at[key] = now
        self._trim(window, now)

    @staticmethod
    def _trim(window: _Window, now: float) -> None:
        while window.demand and window.demand[0][0] < now - DEMAND_KEEP_S:
            window.demand.popleft()
        gone = [r for r, (at, _) in window.reports.items() if now - at > DEMAND_KEEP_S]
        for router_id in gone:
            del window.reports[router_id]
        horizon = now - STATS_WINDOW_S
        while window.minute and window.minute[0][0] < horizon:
            window.minute.popleft()
        while window.loads and window.loads[0][0] < horizon:
            window.loads.popleft()
        if len(window.held_at) > 64 and any(now - at > 10 for at in window.held_at.values()):
            window.held_at = {k: at for k, at in window.held_at.items() if now - at <= 10}

    def stats(self, deployment_id: DeploymentID, now: float) -> Stats:
        window = self._windows.get(deployment_id)
        if window is None:
            return Stats(0, 0, 0, None, 0, None, None)
        self._trim(window, now)
        fresh = [r for at, r in window.reports.values() if now - at <= REPORT_TTL_S]
        placed = sum(p for _, p, _ in window.minute)
        misses = sum(m for _, _, m in window.minute)
        times = sorted(key[2] for _, key in window.loads)
        return Stats(
            ongoing=sum(r.ongoing for r in fresh),
            queued=sum(r.queued for r in fresh),
            requests=placed,
            hit_rate=round(1 - misses / placed, 4) if placed else None,
            loads=len(times),
            load_p50_s=_quantile(times, 0.5),
            load_p99_s=_quantile(times, 0.99),
        )

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
        for series in (window.requests, window.demand):
            while series and series[0][0] < horizon:
                series.popleft()
        average = sum(v for _, v in window.requests) / len(window.requests)
        state = window.state if window.state is not None and window.state.target == current else ScaleState(current)
        decision = decide(config, state, average, now, self._cache_view(window))
        window.state = decision.state
        return decision

    def _cache_view(self, window: _Window) -> CacheView | None:
        placed = sum(p for _, p, _, _ in window.demand)
        if not placed:
            return None
        misses = sum(m for _, _, m, _ in window.demand)
        counts = self._demand(window)
        total, hot = sum(counts.values()), 0
        covered = 0
        for count in sorted(counts.values(), reverse=True):
            if covered >= HOT_SHARE * total or count < 2:
                break
            covered += count
            hot += 1
        slots = [r.slots for _, r in window.reports.values() if r.slots > 0]
        return CacheView(min(slots) if slots else -1, hot, misses / placed)

    @staticmethod
    def _demand(window: _Window) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, _, _, models in window.demand:
            for model_id, count in models:
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

        A keeper takes at most half its slots in preloads (its own models are in use too),
        counted in ``assigned`` across every replica leaving in the same scale-down; a model
        goes to the first keeper in its rendezvous order that still has room."""
        window = self._windows.get(deployment_id)
        if window is None or not keepers:
            return []
        assigned = {} if assigned is None else assigned
        held, demand = self._held(window), self._demand(window)
        elsewhere = {m for r in keepers for m in held.get(r, {})}
        hot = [m for m in held.get(leaving, {}) if m not in elsewhere and demand.get(m, 0) > 0]
        hot.sort(key=lambda m: -demand[m])
        slots = [r.slots for _, r in window.reports.values() if r.slots > 0]
        room = max(1, min(slots) // 2) if slots else len(hot)
        moves = []
        for model_id in hot:
            keeper = next(
                (k for k in rendezvous_order(model_id, keepers) if assigned.get(k, 0) < room), None
            )
            if keeper is None:
                break
            assigned[keeper] = assigned.get(keeper, 0) + 1
            moves.append((model_id, keeper))
        return moves


def _quantile(ordered: list[float], q: float) -> float | None:
    """The nearest-rank quantile of sorted values (None for none)."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))], 4)
