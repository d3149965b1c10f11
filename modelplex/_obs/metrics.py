"""Prometheus metrics: the families, made once per process, that the recorders update.

Names and tags follow Ray Serve's metrics with ``modelplex_`` for ``ray_serve_`` (counters are
exposed with ``_total``, as Ray's exporter does). Labels keyed by model id keep the
``top_models`` busiest ids per deployment (``cardinality.TopModels``) and fold the rest into
``__other__``. The values are plain numbers in this process (``store``); where they go and how
a scrape reads them: ``folder``; who updates them: ``recorders``.
"""

from __future__ import annotations

from typing import Any

from .._config import MetricsOptions
from .._events import CacheEvents, ControllerEvents, RouterEvents
from .._messages import DeploymentID
from .cardinality import OTHER
from .recorders import CacheRecorder, ControllerRecorder, ReplicaRecorder, RouterRecorder
from .store import Counter, Gauge, Histogram, MaxGauge, Store

__all__ = ["LATENCY_BUCKETS_MS", "Metrics"]

# Ray Serve's DEFAULT_LATENCY_BUCKET_MS.
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 300, 400, 500, 1000, 2000, 5000, 10000, 60000)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


class Metrics:
    """Every family, made once per process; recorders hand out children. ``store`` holds
    them, for the node folder's publisher and this process's scrapes (``folder.py``)."""

    def __init__(self, options: MetricsOptions) -> None:
        self.options = options
        self.store = Store()
        # Children cached per label tuple: ``labels()`` costs more than the update itself.
        self._http_children: dict[tuple, tuple] = {}
        rep = ("deployment", "replica", "application")
        dep = ("deployment", "application")
        store = self.store

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Any:
            return Counter(store, name, doc, labels)

        def gauge(name: str, doc: str, labels: tuple[str, ...]) -> Any:
            return Gauge(store, name, doc, labels)

        def histogram(name: str, doc: str, labels: tuple[str, ...]) -> Any:
            return Histogram(store, name, doc, labels, LATENCY_BUCKETS_MS)

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
        # Tenants: what fairness and the per-model limits do (docs/multiplexing.md#tenants).
        self.shed = counter(
            "modelplex_deployment_shed_requests",
            "Requests refused for a full queue, by model id and reason: model_queue (its "
            "max_queued_requests_per_model, 429) or queue (max_queued_requests, 503).",
            dep + ("model_id", "reason"))
        self.queue_wait = histogram(
            "modelplex_deployment_queue_wait_ms",
            "How long requests waited at a router for a replica slot (0 when placed at once).",
            dep)
        self.slot_seconds = counter(
            "modelplex_model_slot_seconds",
            "Slot time each model id's requests held, from placement to reply: a model id's "
            "rate over the deployment's is its share of the replicas.", dep + ("model_id",))
        self.fair_share = MaxGauge(
            store, "modelplex_model_fair_share",
            "Each busy model id's share of a router's recent slot time (halving every 10 s).",
            dep + ("model_id",))
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
        self.grpc_requests = counter(
            "modelplex_num_grpc_requests", "The number of gRPC requests processed.",
            ("route", "method", "application", "status_code"))
        self.grpc_errors = counter(
            "modelplex_num_grpc_error_requests", "The number of errored gRPC responses.",
            ("route", "error_code", "method", "application"))
        self.grpc_latency = histogram(
            "modelplex_grpc_request_latency_ms",
            "The end-to-end latency of gRPC requests (measured from the proxy).",
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
        return CacheRecorder(self, deployment, replica)

    def router_events(self, deployment: DeploymentID) -> RouterEvents:
        return RouterRecorder(self, deployment)

    def controller_events(self) -> ControllerEvents:
        return ControllerRecorder(self)

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
        children[0].value += 1
        children[1].observe(seconds * 1000)
        if children[2] is not None:
            children[2].value += 1

    def grpc_request(self, route: str, method: str, application: str, code: str, seconds: float) -> None:
        """One gRPC call through a proxy (Ray's ``serve_num_grpc_requests`` and kin; the code
        by name, "OK" for success)."""
        key = ("grpc", route, method, application, code)
        children = self._http_children.get(key)
        if children is None:
            children = (
                self.grpc_requests.labels(route, method, application, code),
                self.grpc_latency.labels(method, route, application, code),
                self.grpc_errors.labels(route, code, method, application) if code != "OK" else None,
            )
            if len(self._http_children) < 10_000:
                self._http_children[key] = children
        children[0].value += 1
        children[1].observe(seconds * 1000)
        if children[2] is not None:
            children[2].value += 1
