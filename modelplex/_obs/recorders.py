"""What the core classes' events become: updates of the metric families.

Installed through ``_events``' interfaces (the cache, router and controller never make a
metric); the replica's own figures through ``ReplicaRecorder``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from .._messages import DeploymentID
from .cardinality import TopModels

if TYPE_CHECKING:
    from .metrics import Metrics

# The model_id label of requests without one.
NO_MODEL = "__none__"

__all__ = ["CacheRecorder", "ControllerRecorder", "NoReplicaRecorder", "ReplicaRecorder", "RouterRecorder"]


class CacheRecorder:
    def __init__(self, metrics: Metrics, deployment: DeploymentID, replica: str) -> None:
        labels = (deployment.name, replica, deployment.app)
        dep = (deployment.name, deployment.app)
        self._m = metrics
        self._dep = dep
        self._rep = labels
        self._top = TopModels(metrics.options.top_models)
        self._hit = metrics.hits.labels(*dep)
        self._miss = metrics.misses.labels(*dep)
        self._get = metrics.get_model_requests.labels(*labels)
        self._load_latency = metrics.load_latency.labels(*labels)
        self._unload_latency = metrics.unload_latency.labels(*labels)
        self._loads = metrics.loads.labels(*labels)
        self._unloads = metrics.unloads.labels(*labels)
        self._num = metrics.num_models.labels(*labels)
        self._bytes = metrics.model_bytes.labels(*labels)
        self._registered: dict[str, str] = {}  # model id -> the label it was registered under
        self._requests: dict[str, Any] = {}

    def requested(self, model_id: str, hit: bool) -> None:
        (self._hit if hit else self._miss).inc()
        self._get.inc()
        label = self._top.label(model_id)
        child = self._requests.get(label)
        if child is None:
            child = self._requests[label] = self._m.model_requests.labels(*self._dep, label)
        child.inc()

    def loaded(self, model_id: str, seconds: float) -> None:
        self._loads.inc()
        self._load_latency.observe(seconds * 1000)
        self._register(model_id)

    def load_failed(self, model_id: str, timed_out: bool) -> None:
        self._m.load_failures.labels(*self._dep, "timeout" if timed_out else "error").inc()

    def kept(self, model_id: str) -> None:
        self._register(model_id)

    def evicted(self, model_id: str, reason: str) -> None:
        self._m.evictions.labels(*self._dep, reason).inc()
        label = self._registered.pop(model_id, None)
        if label is not None:
            self._m.registered.labels(*self._rep, label).dec()

    def unloaded(self, model_id: str, seconds: float) -> None:
        self._unloads.inc()
        self._unload_latency.observe(seconds * 1000)

    def holds(self, models: int, nbytes: int) -> None:
        self._num.set(models)
        self._bytes.set(nbytes)

    def _register(self, model_id: str) -> None:
        if model_id in self._registered:
            return
        label = self._top.current(model_id)
        self._registered[model_id] = label
        self._m.registered.labels(*self._rep, label).inc()


class RouterRecorder:
    def __init__(self, metrics: Metrics, deployment: DeploymentID) -> None:
        dep = (deployment.name, deployment.app)
        self._m = metrics
        self._dep = dep
        self._spills = metrics.spills.labels(*dep)
        self._duplicates = metrics.duplicate_loads.labels(*dep)
        self._queued = metrics.queued.labels(*dep)
        self._wait = metrics.queue_wait.labels(*dep)
        self._waiting = 0
        self._top = TopModels(metrics.options.top_models)
        self._slot_time: dict[str, Any] = {}  # label -> child
        self._shares: dict[str, Any] = {}  # label -> child, of every label ever set

    def placed(self, reason: str, loads: bool, duplicate: bool) -> None:
        if reason == "spill":
            self._spills.inc()
        if duplicate:
            self._duplicates.inc()

    def queued(self, waiting: int) -> None:
        if waiting != self._waiting:
            self._waiting = waiting
            self._queued.set(waiting)

    def waited(self, seconds: float) -> None:
        self._wait.observe(seconds * 1000)

    def shed(self, model_id: str, reason: str) -> None:
        label = self._top.label(model_id) if model_id else NO_MODEL
        self._m.shed.labels(*self._dep, label, reason).inc()

    def served(self, model_id: str, seconds: float) -> None:
        label = self._top.label(model_id) if model_id else NO_MODEL
        child = self._slot_time.get(label)
        if child is None:
            child = self._slot_time[label] = self._m.slot_seconds.labels(*self._dep, label)
        child.inc(seconds)

    def shares(self, shares: Mapping[str, float]) -> None:
        by_label: dict[str, float] = dict.fromkeys(self._shares, 0.0)  # gone quiet: 0
        for model_id, share in shares.items():
            label = self._top.current(model_id) if model_id else NO_MODEL
            by_label[label] = by_label.get(label, 0.0) + share
        for label, share in by_label.items():
            child = self._shares.get(label)
            if child is None:
                child = self._shares[label] = self._m.fair_share.labels(*self._dep, label)
            child.set(round(share, 4))


class ControllerRecorder:
    def __init__(self, metrics: Metrics) -> None:
        self._healthy = metrics.healthy
        self._last: dict[tuple[str, str], int] = {}

    def replicas_healthy(self, deployment: str, application: str, healthy: int) -> None:
        key = (deployment, application)
        if self._last.get(key) != healthy:
            self._last[key] = healthy
            self._healthy.labels(deployment, application).set(healthy)


class ReplicaRecorder:
    """A replica's own figures: starts, requests in progress, each request's outcome."""

    def __init__(self, metrics: Metrics, deployment: DeploymentID, replica: str) -> None:
        self._m = metrics
        self._labels = (deployment.name, replica, deployment.app)
        self._processing = metrics.processing.labels(*self._labels)
        self._by_route: dict[str, tuple[Any, Any]] = {}

    def started(self) -> None:
        self._m.replica_starts.labels(*self._labels).inc()

    def ongoing(self, count: int) -> None:
        self._processing.value = count

    def request(self, route: str, seconds: float, error: str | None) -> None:
        children = self._by_route.get(route)
        if children is None:
            children = (
                self._m.deployment_requests.labels(*self._labels, route),
                self._m.processing_latency.labels(*self._labels, route),
            )
            if len(self._by_route) < 1000:
                self._by_route[route] = children
        children[0].value += 1
        children[1].observe(seconds * 1000)
        if error is not None:
            self._m.deployment_errors.labels(*self._labels, route, error).inc()


class NoReplicaRecorder:
    def started(self) -> None:
        pass

    def ongoing(self, count: int) -> None:
        pass

    def request(self, route: str, seconds: float, error: str | None) -> None:
        pass
