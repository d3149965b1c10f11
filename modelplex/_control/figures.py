"""What ``serve.status`` and the live page say of a deployment: its last minute, and every load
and unload in order.

Two sources, each for what it knows first hand:

- the routers' reports (``RouterReport``, every half second): requests placed, those that named
  a model and those of them that missed, the requests' latencies, requests running and queued
  now. A request without a model id is neither a hit nor a miss.
- the replicas' own events (``ModelEvents``, as they happen): every load with its time, every
  failed load, every model that left a cache and why. Loads are counted here, not from what
  reports show replicas holding, so a model loaded and evicted between two reports counts, and
  the page's timeline is these events, numbered, not a comparison of two looks.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .._data.demand import latency_quantile
from .._messages import DeploymentID, ModelEvents, RouterReport
from .._types import STATS_WINDOW_S

__all__ = ["Figures", "QUEUES_SHOWN", "REPORT_TTL_S", "Stats", "TIMELINE_KEEP"]

# A router silent this long is gone (its process ended): its last report no longer counts.
REPORT_TTL_S = 2.0
# Events kept for pages that connect late or fall behind, over every deployment.
TIMELINE_KEEP = 2000


@dataclass(frozen=True)
class Stats:
    """A deployment over the last ``STATS_WINDOW_S``."""

    ongoing: int  # requests running on replicas, over routers, now
    queued: int  # requests waiting at routers, now
    requests: int  # requests placed
    hit_rate: float | None  # of those that named a model, the share that found it loaded
    loads: int  # loads that finished
    load_p50_s: float | None
    load_p99_s: float | None
    latency_p50_s: float | None = None  # of the requests, as their routers timed them
    latency_p99_s: float | None = None
    # The longest queues at routers now, by model id, most first (``QUEUES_SHOWN`` at most).
    queues: tuple[tuple[str, int], ...] = ()


# How many model ids' queues ``stats`` names.
QUEUES_SHOWN = 5


@dataclass
class _Minute:
    reports: dict[str, tuple[float, RouterReport]] = field(default_factory=dict)
    placed: deque = field(default_factory=deque)  # (time, placed, with a model id, misses)
    latencies: deque = field(default_factory=deque)  # (time, ((bucket, count), ...))
    loads: deque = field(default_factory=deque)  # (time, seconds)


class Figures:
    def __init__(self) -> None:
        self._minutes: dict[DeploymentID, _Minute] = {}
        self._timeline: deque[dict[str, Any]] = deque(maxlen=TIMELINE_KEEP)
        self._seq = 0

    def report(self, report: RouterReport, now: float) -> None:
        minute = self._minutes.setdefault(report.deployment_id, _Minute())
        minute.reports[report.router_id] = (now, report)
        if report.placed:
            minute.placed.append((now, report.placed, report.with_model, report.misses))
        if report.latencies:
            minute.latencies.append((now, report.latencies))
        self._trim(minute, now)

    def models(self, deployment_id: DeploymentID, message: ModelEvents, now: float) -> None:
        """A replica's cache events: counted, and numbered into the timeline."""
        minute = self._minutes.setdefault(deployment_id, _Minute())
        for event in message.events:
            if event.kind == "loaded" and event.seconds is not None:
                minute.loads.append((now, event.seconds))
            self._seq += 1
            self._timeline.append({
                "seq": self._seq, "time": round(event.time, 3), "event": event.kind,
                "app": deployment_id.app, "deployment": deployment_id.name,
                "replica": message.replica_id, "model": event.model_id,
                "load_s": None if event.seconds is None else round(event.seconds, 4),
                "reason": event.reason,
            })
        self._trim(minute, now)

    def timeline(self, after: int = 0, last: int | None = None) -> tuple[int, list[dict[str, Any]]]:
        """The events numbered after ``after`` (at most the ``last`` of them), oldest first,
        and the number to ask after next time."""
        events = [e for e in self._timeline if e["seq"] > after]
        if last is not None:
            events = events[-last:] if last > 0 else []
        return self._seq, events

    def forget(self, deployment_id: DeploymentID) -> None:
        self._minutes.pop(deployment_id, None)

    @staticmethod
    def _trim(minute: _Minute, now: float) -> None:
        horizon = now - STATS_WINDOW_S
        for series in (minute.placed, minute.latencies, minute.loads):
            while series and series[0][0] < horizon:
                series.popleft()
        for router_id in [r for r, (at, _) in minute.reports.items() if now - at > STATS_WINDOW_S]:
            del minute.reports[router_id]

    def stats(self, deployment_id: DeploymentID, now: float) -> Stats:
        minute = self._minutes.get(deployment_id)
        if minute is None:
            return Stats(0, 0, 0, None, 0, None, None)
        self._trim(minute, now)
        fresh = [r for at, r in minute.reports.values() if now - at <= REPORT_TTL_S]
        placed = sum(p for _, p, _, _ in minute.placed)
        named = sum(n for _, _, n, _ in minute.placed)
        misses = sum(m for _, _, _, m in minute.placed)
        latencies: dict[int, int] = {}
        for _, buckets in minute.latencies:
            for bucket, count in buckets:
                latencies[bucket] = latencies.get(bucket, 0) + count
        times = sorted(s for _, s in minute.loads)
        queues: dict[str, int] = {}
        for report in fresh:
            for model_id, count in report.queues:
                queues[model_id] = queues.get(model_id, 0) + count
        longest = sorted(queues.items(), key=lambda kv: (-kv[1], kv[0]))[:QUEUES_SHOWN]
        return Stats(
            ongoing=sum(r.ongoing for r in fresh),
            queued=sum(r.queued for r in fresh),
            requests=placed,
            hit_rate=round(1 - misses / named, 4) if named else None,
            loads=len(times),
            load_p50_s=_quantile(times, 0.5),
            load_p99_s=_quantile(times, 0.99),
            latency_p50_s=latency_quantile(latencies, 0.5),
            latency_p99_s=latency_quantile(latencies, 0.99),
            queues=tuple(longest),
        )


def _quantile(ordered: list[float], q: float) -> float | None:
    """The nearest-rank quantile of sorted values (None for none)."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))], 4)
