"""What the core classes tell an observer: small event interfaces, no-ops by default.

The model cache, the router, the controller and the replica call these; they never create a
metric. The driver and the replica install the Prometheus implementations (``_obs/recorders.py``), so
the core classes' unit tests stay plain and pay nothing. A method here must be cheap: some run
on every request.
"""

from __future__ import annotations

from typing import Mapping, Protocol

__all__ = [
    "CacheEvents",
    "ControllerEvents",
    "EVICTION_REASONS",
    "NO_CACHE_EVENTS",
    "NO_CONTROLLER_EVENTS",
    "NO_ROUTER_EVENTS",
    "RouterEvents",
]

# Why a model left a cache: the model-count limit under the eviction policy ("lru"), the byte
# budget, an explicit unload (management API), and the replica stopping for a new version, a
# smaller replica count, or the instance's shutdown.
EVICTION_REASONS = ("lru", "bytes", "unload_api", "redeploy", "downscale", "shutdown")


class CacheEvents(Protocol):
    """One ``ModelCache``'s story: requests, loads, evictions, unloads, what it holds."""

    def requested(self, model_id: str, hit: bool) -> None:
        """``get_model`` was called: served from memory (hit), or it waits for a load (miss)."""

    def loaded(self, model_id: str, seconds: float) -> None:
        """A load succeeded and the model is in the cache."""

    def load_failed(self, model_id: str, timed_out: bool) -> None: ...

    def kept(self, model_id: str) -> None:
        """An evicted model still in use was asked for again and is cached once more."""

    def evicted(self, model_id: str, reason: str) -> None:
        """Out of the cache (``reason`` in ``EVICTION_REASONS``); unloaded now or when the last
        request lets go."""

    def unloaded(self, model_id: str, seconds: float) -> None:
        """Its ``__del__`` ran (``seconds`` long)."""

    def holds(self, models: int, nbytes: int) -> None:
        """After every change: the models cached and their known bytes."""


class RouterEvents(Protocol):
    """One router's decisions (one router per deployment per process)."""

    def placed(self, reason: str, loads: bool, duplicate: bool) -> None:
        """A request got a replica; ``reason`` is ``_data.routing.Reason``'s value. ``duplicate``:
        it starts a load of a model another replica already holds."""

    def queued(self, waiting: int) -> None:
        """The number of requests waiting in this router changed."""

    def waited(self, seconds: float) -> None:
        """A request got its slot ``seconds`` after it arrived (0 when placed at once)."""

    def shed(self, model_id: str, reason: str) -> None:
        """A request was refused for a full queue: ``reason`` "model_queue" (its model id's
        backlog, 429) or "queue" (the deployment's, 503)."""

    def served(self, model_id: str, seconds: float) -> None:
        """A request of ``model_id`` let go of its slot after ``seconds``."""

    def shares(self, shares: Mapping[str, float]) -> None:
        """Every report: each busy model id's share of this router's recent slot time."""


class ControllerEvents(Protocol):
    def replicas_healthy(self, deployment: str, application: str, healthy: int) -> None:
        """After every reconcile pass: a deployment's running replicas."""


class _NoCacheEvents:
    def requested(self, model_id: str, hit: bool) -> None:
        pass

    def loaded(self, model_id: str, seconds: float) -> None:
        pass

    def load_failed(self, model_id: str, timed_out: bool) -> None:
        pass

    def kept(self, model_id: str) -> None:
        pass

    def evicted(self, model_id: str, reason: str) -> None:
        pass

    def unloaded(self, model_id: str, seconds: float) -> None:
        pass

    def holds(self, models: int, nbytes: int) -> None:
        pass


class _NoRouterEvents:
    def placed(self, reason: str, loads: bool, duplicate: bool) -> None:
        pass

    def queued(self, waiting: int) -> None:
        pass

    def waited(self, seconds: float) -> None:
        pass

    def shed(self, model_id: str, reason: str) -> None:
        pass

    def served(self, model_id: str, seconds: float) -> None:
        pass

    def shares(self, shares: Mapping[str, float]) -> None:
        pass


class _NoControllerEvents:
    def replicas_healthy(self, deployment: str, application: str, healthy: int) -> None:
        pass


NO_CACHE_EVENTS: CacheEvents = _NoCacheEvents()
NO_ROUTER_EVENTS: RouterEvents = _NoRouterEvents()
NO_CONTROLLER_EVENTS: ControllerEvents = _NoControllerEvents()
