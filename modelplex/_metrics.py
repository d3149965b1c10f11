"""Prometheus metrics: the families, the recorders installed into the core classes, and the
exposition each proxy serves at ``GET /-/metrics``.

Every process of an instance (the driver with its controller, proxy and routers; each replica;
each node proxy) writes its figures with prometheus-client's multiprocess mode into one folder
per node, ``<instance dir>/<node id>``. A proxy's scrape reads its node's folder with a
``MultiProcessCollector``, so one scrape covers the proxy, the controller and every replica on
that node, on either backend. Counters and histograms of replicas that ended stay (they are
monotonic); live gauges of a process that ended are dropped (``mark_process_dead``): by the
replica itself when it stops, and by the scrape for any process no longer alive.

Names and tags follow Ray Serve's metrics with ``modelplex_`` for ``ray_serve_``
(prometheus-client adds ``_total`` to counters, as Ray's exporter does). Labels keyed by model
id keep the ``top_models`` busiest ids per deployment (``TopModels``) and fold the rest into
``__other__``.
"""

from __future__ import annotations

import asyncio
import bisect
import glob
import os
import re
import shutil
import tempfile
import time
from typing import Any, Awaitable, Callable

from ._config import MetricsOptions
from ._events import CacheEvents, ControllerEvents, RouterEvents
from ._messages import DeploymentID

__all__ = [
    "Metrics",
    "MetricsMiddleware",
    "OTHER",
    "TopModels",
    "exposition",
    "for_process",
    "install",
    "node_dir",
    "process_ended",
    "uninstall",
]

OTHER = "__other__"
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Ray Serve's DEFAULT_LATENCY_BUCKET_MS.
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 300, 400, 500, 1000, 2000, 5000, 10000, 60000)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
_PID_FILE = re.compile(r"gauge_live\w*_(\d+)\.db$")


# ---- cardinality --------------------------------------------------------------------------------


class TopModels:
    """Which model ids keep a label of their own: at most ``k`` at a time, the busiest.

    A new id gets a label while fewer than ``k`` have one, or when it has been asked for more
    often than the least busy labelled id, which then folds into ``OTHER``. Counts are kept for
    at most ``max_tracked`` ids (the busiest quarter survives a prune), and at most
    ``max_labels`` ids are ever labelled, so a stream of distinct ids costs bounded memory and
    bounded series: each labelled id is a series for the rest of the process.
    """

    def __init__(self, k: int, *, max_tracked: int = 4096, max_labels: int | None = None) -> None:
        self._k = k
        self._max_tracked = max(max_tracked, 4 * k)
        self._budget = max_labels if max_labels is not None else 2 * k
        self._counts: dict[str, int] = {}
        self._labelled: set[str] = set()

    def label(self, model_id: str) -> str:
        """Count one request for ``model_id`` and return its label."""
        counts = self._counts
        count = counts.get(model_id, 0) + 1
        counts[model_id] = count
        labelled = self._labelled
        if model_id in labelled:
            return model_id
        if len(counts) > self._max_tracked:
            kept = sorted(counts.items(), key=lambda kv: -kv[1])[: self._max_tracked // 4]
            self._counts = dict(kept)
            for m in labelled:
                self._counts.setdefault(m, counts[m])
        if self._budget <= 0:
            return OTHER
        if len(labelled) < self._k:
            return self._admit(model_id)
        weakest = min(labelled, key=lambda m: self._counts.get(m, 0))
        if count > self._counts.get(weakest, 0):
            labelled.discard(weakest)
            return self._admit(model_id)
        return OTHER

    def current(self, model_id: str) -> str:
        """The label ``model_id`` has now, without counting a request."""
        return model_id if model_id in self._labelled else OTHER

    def _admit(self, model_id: str) -> str:
        self._labelled.add(model_id)
        self._budget -= 1
        return model_id


# ---- the process's metrics folder -------------------------------------------------------------


def new_instance_dir() -> str:
    return tempfile.mkdtemp(prefix="modelplex-metrics-")


def node_dir(base: str, node_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", node_id) or "local"
    return os.path.join(base, safe)


_saved: list[Any] = []


def install(directory: str) -> None:
    """Make this process's prometheus-client metrics write to ``directory`` (multiprocess mode).

    Set here, not from the environment at import time: prometheus-client may already have been
    imported (by Ray, by user code). Metrics made after this call write to the folder."""
    from prometheus_client import values

    os.makedirs(directory, exist_ok=True)
    _saved.append((values.ValueClass, os.environ.get(_MULTIPROC_ENV)))
    os.environ[_MULTIPROC_ENV] = directory
    values.ValueClass = values.MultiProcessValue()


def uninstall() -> None:
    """Undo the last ``install`` (the driver's shutdown; tests start several instances)."""
    from prometheus_client import values

    if not _saved:
        return
    value_class, env = _saved.pop()
    values.ValueClass = value_class
    if env is None:
        os.environ.pop(_MULTIPROC_ENV, None)
    else:
        os.environ[_MULTIPROC_ENV] = env


def process_ended(directory: str, pid: int | None = None) -> None:
    """Drop the live gauges of a process that ended (this one by default)."""
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(os.getpid() if pid is None else pid, directory)
    except OSError:
        pass


def for_process(options: MetricsOptions | None, node_id: str) -> "tuple[Metrics, str] | None":
    """In a replica or node proxy: write to this node's folder; the families and the folder."""
    if options is None or not options.enabled:
        return None
    directory = node_dir(options.directory, node_id)
    install(directory)
    return Metrics(options), directory


def remove_dir(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def _sweep(directory: str) -> None:
    """Drop live gauges of processes no longer alive (a replica killed without stopping)."""
    pids = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        match = _PID_FILE.search(os.path.basename(path))
        if match:
            pids.add(int(match.group(1)))
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            process_ended(directory, pid)
        except OSError:
            pass  # alive, someone else's


def exposition(directory: str) -> tuple[bytes, str]:
    """The text format of everything written to ``directory``: body and content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    _sweep(directory)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return generate_latest(registry), CONTENT_TYPE_LATEST


# ---- batching the per-request updates ------------------------------------------------------------

# Per-request figures are gathered in memory and written to the files at most this often: a
# write to a memory-mapped value costs microseconds (a lock, a pid check), a dict update
# less than one. Ray Serve batches the same way (RAY_SERVE_METRICS_EXPORT_INTERVAL_MS).
FLUSH_S = 0.25


class _Batch:
    """Counter increments, histogram observations and gauge values of one event loop, written
    out on a timer armed by the first update after a flush."""

    def __init__(self) -> None:
        self._counts: dict[Any, float] = {}
        self._observed: dict[Any, list[float]] = {}
        self._gauges: dict[Any, float] = {}
        self._armed = False

    def inc(self, child: Any) -> None:
        self._counts[child] = self._counts.get(child, 0) + 1
        self._arm()

    def observe(self, child: Any, value: float) -> None:
        values = self._observed.get(child)
        if values is None:
            self._observed[child] = [value]
        else:
            values.append(value)
        self._arm()

    def set(self, child: Any, value: float) -> None:
        self._gauges[child] = value
        self._arm()

    def _arm(self) -> None:
        if self._armed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()  # no loop to wait on: write now
            return
        self._armed = True
        loop.call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        self._armed = False
        counts, self._counts = self._counts, {}
        observed, self._observed = self._observed, {}
        gauges, self._gauges = self._gauges, {}
        for child, amount in counts.items():
            child.inc(amount)
        for child, values in observed.items():
            _observe_many(child, values)
        for child, value in gauges.items():
            child.set(value)


def _observe_many(child: Any, values: list[float]) -> None:
    """``child.observe`` for each value, with one write per bucket touched rather than two
    per value. Uses the Histogram child's ``_sum``, ``_buckets`` and ``_upper_bounds`` of the
    pinned prometheus-client (0.26); ``observe`` itself writes the same fields."""
    bounds = child._upper_bounds
    per_bucket: dict[int, int] = {}
    for value in values:
        i = bisect.bisect_left(bounds, value)
        per_bucket[i] = per_bucket.get(i, 0) + 1
    child._sum.inc(sum(values))
    for i, n in per_bucket.items():
        child._buckets[i].inc(n)


# ---- the families -------------------------------------------------------------------------------


class Metrics:
    """Every family, made once per process after ``install``; recorders hand out children.

    Metrics are registered nowhere: in multiprocess mode the folder is the registry."""

    def __init__(self, options: MetricsOptions) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.options = options
        # Children cached per label tuple: ``labels()`` costs more than the update itself.
        self._http_children: dict[tuple, tuple] = {}
        self.batch = _Batch()  # the proxy's per-request updates (one loop per process)
        rep = ("deployment", "replica", "application")
        dep = ("deployment", "application")

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Any:
            return Counter(name, doc, labels, registry=None)

        def gauge(name: str, doc: str, labels: tuple[str, ...]) -> Any:
            return Gauge(name, doc, labels, registry=None, multiprocess_mode="livesum")

        def histogram(name: str, doc: str, labels: tuple[str, ...]) -> Any:
            return Histogram(name, doc, labels, registry=None, buckets=LATENCY_BUCKETS_MS)

        # Ray Serve's multiplexing metrics (ray/serve/multiplex.py).
        self.load_latency = histogram(
            "modelplex_multiplexed_model_load_latency_ms", "The time it takes to load a model.", rep)
        self.unload_latency = histogram(
            "modelplex_multiplexed_model_unload_latency_ms", "The time it takes to unload a model.", rep)
        self.num_models = gauge(
            "modelplex_num_multiplexed_models", "The number of models loaded on the current replica.", rep)
        self.registered = gauge(
            "modelplex_registered_multiplexed_model_id",
            "The model ids registered on the current replica (1 each; folded ids add up in "
            f"{OTHER}).", rep + ("model_id",))
        self.get_model_requests = counter(
            "modelplex_multiplexed_get_model_requests_counter",
            "The counter for get model requests on the current replica.", rep)
        self.unloads = counter(
            "modelplex_multiplexed_models_unload_counter",
            "The counter for unloaded models on the current replica.", rep)
        self.loads = counter(
            "modelplex_multiplexed_models_load_counter",
            "The counter for loaded models on the current replica.", rep)
        # Beyond Ray: the cache's hit rate, failures, evictions, bytes; the router's spills.
        self.hits = counter(
            "modelplex_multiplexed_cache_hits", "get_model calls served from memory.", dep)
        self.misses = counter(
            "modelplex_multiplexed_cache_misses", "get_model calls that waited for a load.", dep)
        self.load_failures = counter(
            "modelplex_multiplexed_model_load_failures",
            "Loads that failed (reason: error, timeout).", dep + ("reason",))
        self.evictions = counter(
            "modelplex_multiplexed_model_evictions",
            "Models out of a cache, by reason (lru, bytes, unload_api, redeploy, downscale, "
            "shutdown).", dep + ("reason",))
        self.model_bytes = gauge(
            "modelplex_multiplexed_model_bytes", "Known bytes of the models a replica holds.", rep)
        self.model_requests = counter(
            "modelplex_multiplexed_model_requests",
            f"get_model calls by model id (the busiest ids; the rest in {OTHER}).",
            dep + ("model_id",))
        self.spills = counter(
            "modelplex_multiplexed_spills",
            "Requests sent to a replica without their model because its holders were busy.", dep)
        self.duplicate_loads = counter(
            "modelplex_multiplexed_duplicate_loads",
            "Loads started on a replica while another replica held the model.", dep)
        # Requests: Ray's proxy, replica and router metrics.
        self.http_requests = counter(
            "modelplex_num_http_requests", "The number of HTTP requests processed.",
            ("route", "method", "application", "status_code"))
        self.http_errors = counter(
            "modelplex_num_http_error_requests", "The number of errored HTTP responses.",
            ("route", "error_code", "method", "application"))
        self.http_latency = histogram(
            "modelplex_http_request_latency_ms",
            "The end-to-end latency of HTTP requests (measured from the proxy).",
            ("method", "route", "application", "status_code"))
        self.deployment_requests = counter(
            "modelplex_deployment_request_counter",
            "The number of queries that have been processed in this replica.", rep + ("route",))
        self.deployment_errors = counter(
            "modelplex_deployment_error_counter",
            "The number of exceptions that have occurred in this replica.",
            rep + ("route", "exception_type"))
        self.processing_latency = histogram(
            "modelplex_deployment_processing_latency_ms",
            "The latency for queries to be processed.", rep + ("route",))
        self.processing = gauge(
            "modelplex_replica_processing_queries", "The current number of queries being processed.", rep)
        self.queued = gauge(
            "modelplex_deployment_queued_queries",
            "The current number of queries to this deployment waiting to be assigned to a replica.",
            dep)
        self.replica_starts = counter(
            "modelplex_deployment_replica_starts",
            "The number of times this replica has been started.", rep)
        self.healthy = gauge(
            "modelplex_deployment_replica_healthy", "The number of healthy replicas of a deployment.", dep)

    # ---- recorders ----------------------------------------------------------------------------

    def cache_events(self, deployment: DeploymentID, replica: str) -> CacheEvents:
        return _CacheRecorder(self, deployment, replica)

    def router_events(self, deployment: DeploymentID) -> RouterEvents:
        return _RouterRecorder(self, deployment)

    def controller_events(self) -> ControllerEvents:
        return _ControllerRecorder(self)

    def replica(self, deployment: DeploymentID, replica: str) -> "ReplicaRecorder":
        return ReplicaRecorder(self, deployment, replica)

    def http_request(self, route: str, method: str, application: str, status: int, seconds: float) -> None:
        key = (route, method, application, status)
        children = self._http_children.get(key)
        if children is None:
            if method not in _METHODS:
                method = "OTHER"
            code = str(status)
            children = (
                self.http_requests.labels(route, method, application, code),
                self.http_latency.labels(method, route, application, code),
                self.http_errors.labels(route, code, method, application) if status >= 400 else None,
            )
            if len(self._http_children) < 10_000:
                self._http_children[key] = children
        batch = self.batch
        batch.inc(children[0])
        batch.observe(children[1], seconds * 1000)
        if children[2] is not None:
            batch.inc(children[2])


class _CacheRecorder:
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


class _RouterRecorder:
    def __init__(self, metrics: Metrics, deployment: DeploymentID) -> None:
        dep = (deployment.name, deployment.app)
        self._spills = metrics.spills.labels(*dep)
        self._duplicates = metrics.duplicate_loads.labels(*dep)
        self._queued = metrics.queued.labels(*dep)
        self._waiting = 0

    def placed(self, reason: str, loads: bool, duplicate: bool) -> None:
        if reason == "spill":
            self._spills.inc()
        if duplicate:
            self._duplicates.inc()

    def queued(self, waiting: int) -> None:
        if waiting != self._waiting:
            self._waiting = waiting
            self._queued.set(waiting)


class _ControllerRecorder:
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
        self._batch = _Batch()  # updates from the user loop

    def started(self) -> None:
        self._m.replica_starts.labels(*self._labels).inc()

    def ongoing(self, count: int) -> None:
        self._batch.set(self._processing, count)

    def request(self, route: str, seconds: float, error: str | None) -> None:
        children = self._by_route.get(route)
        if children is None:
            children = (
                self._m.deployment_requests.labels(*self._labels, route),
                self._m.processing_latency.labels(*self._labels, route),
            )
            if len(self._by_route) < 1000:
                self._by_route[route] = children
        self._batch.inc(children[0])
        self._batch.observe(children[1], seconds * 1000)
        if error is not None:
            self._m.deployment_errors.labels(*self._labels, route, error).inc()


class NoReplicaRecorder:
    def started(self) -> None:
        pass

    def ongoing(self, count: int) -> None:
        pass

    def request(self, route: str, seconds: float, error: str | None) -> None:
        pass


# ---- the proxy's side -----------------------------------------------------------------------------

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]
# Where ProxyApp leaves the matched route prefix and application for this middleware.
ROUTE_KEY = "modelplex.route"


class MetricsMiddleware:
    """Counts and times every HTTP request through the proxy app it wraps (Ray's
    ``modelplex_num_http_requests`` and kin). A request that ended without an answer (the
    client went away) counts as 499, as in Ray."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:  # the runtime sets deployer, access_log on the app
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 499

        async def counted(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            route, application = scope.get(ROUTE_KEY, ("", ""))
            self._metrics.http_request(
                route, scope.get("method", ""), application, status, time.perf_counter() - start
            )
