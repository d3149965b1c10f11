"""What one router tells the controller every ``REPORT_S``: its load and the demand it saw.

Counts are since the previous report, and bounded: at most ``MAX_DEMAND_IDS`` model ids are
counted between two reports (the busiest quarter survives a prune), and a report names the
``REPORTED_IDS`` busiest. Request latencies travel as counts per bucket (``latency_bucket``:
eight buckets per doubling, so a quantile read back is within about 4.5%), which add up over
routers and reports however many requests there were.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

from .._messages import DeploymentID, RouterReport
from .._obs.cardinality import keep_busiest
from .registry import ReplicaView

__all__ = [
    "Demand", "MAX_DEMAND_IDS", "REPORTED_IDS", "bucket_seconds", "latency_bucket",
    "latency_quantile",
]

MAX_DEMAND_IDS = 4096
REPORTED_IDS = 64
# Latency buckets: bucket 0 holds everything up to LATENCY_FLOOR_S; bucket i > 0 holds
# (FLOOR * 2**((i-1)/8), FLOOR * 2**(i/8)].
LATENCY_FLOOR_S = 1e-4
_PER_DOUBLING = 8


def latency_bucket(seconds: float) -> int:
    if seconds <= LATENCY_FLOOR_S:
        return 0
    return math.ceil(math.log2(seconds / LATENCY_FLOOR_S) * _PER_DOUBLING)


def bucket_seconds(bucket: int) -> float:
    """The middle of a bucket (geometrically), what a quantile in it reads as."""
    if bucket <= 0:
        return LATENCY_FLOOR_S
    return LATENCY_FLOOR_S * 2 ** ((bucket - 0.5) / _PER_DOUBLING)


def latency_quantile(counts: Mapping[int, int], q: float) -> float | None:
    """The nearest-rank ``q`` quantile of bucketed latencies (None for none)."""
    total = sum(counts.values())
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= rank:
            return round(bucket_seconds(bucket), 6)
    return None  # not reached


class Demand:
    def __init__(self, router_id: str, deployment_id: DeploymentID) -> None:
        self._router_id = router_id
        self._deployment_id = deployment_id
        self._placed = 0
        self._with_model = 0
        self._misses = 0
        self._by_model: dict[str, int] = {}
        self._latencies: dict[int, int] = {}
        self.managing = 0  # management calls on replicas now (not requests: not reported)

    def __len__(self) -> int:
        """Model ids counted since the last report."""
        return len(self._by_model)

    def count(self, model_id: str, loads: bool) -> None:
        """One request placed; ``loads``: it starts a load on its replica."""
        self._placed += 1
        self._misses += loads
        if model_id:
            self._with_model += 1
            counts = self._by_model
            counts[model_id] = counts.get(model_id, 0) + 1
            if len(counts) > MAX_DEMAND_IDS:
                self._by_model = keep_busiest(counts, MAX_DEMAND_IDS // 4)

    def answered(self, seconds: float) -> None:
        """One request's reply came back ``seconds`` after the router took it."""
        bucket = latency_bucket(seconds)
        self._latencies[bucket] = self._latencies.get(bucket, 0) + 1

    def report(
        self, views: Iterable[ReplicaView], queued: int,
        queues: tuple[tuple[str, int], ...] = (),
    ) -> RouterReport:
        """The report of what was counted (and the counts start again)."""
        views = list(views)
        report = RouterReport(
            router_id=self._router_id,
            deployment_id=self._deployment_id,
            ongoing=max(0, sum(v.ongoing for v in views) - self.managing),
            queued=queued,
            placed=self._placed,
            misses=self._misses,
            models=tuple(keep_busiest(self._by_model, REPORTED_IDS).items()),
            held=tuple((v.replica_id, tuple(v.loaded.items())) for v in views),
            slots=max((v.slots for v in views), default=-1),
            queues=queues,
            with_model=self._with_model,
            latencies=tuple(sorted(self._latencies.items())),
        )
        self._placed = self._misses = self._with_model = 0
        self._by_model = {}
        self._latencies = {}
        return report
