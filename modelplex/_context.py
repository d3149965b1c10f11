"""Per-request context, carried by a context variable.

A context variable (not a thread-local or an attribute on the replica) makes the model id
belong to the request: concurrent requests on one replica each see their own id, and a handle
call made with another id never changes the caller's.
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, TypeVar

from ._events import CacheEvents


@dataclass
class RequestContext:
    request_id: str = ""
    model_id: str = ""
    route: str = ""
    # Release callbacks for the models this request acquired; run when the request ends, so a
    # model is never unloaded while a request that fetched it is still running.
    releases: list[Callable[[], None]] = field(default_factory=list)

    def release_all(self) -> None:
        releases, self.releases = self.releases, []
        for release in releases:
            release()


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "modelplex_request", default=None
)


@dataclass(frozen=True)
class LoadScope:
    """Set while a multiplexed loader runs: which model it loads, the name its artifact leases
    go under (one per model per cache), and whether only the disk tier is being warmed."""

    model_id: str
    scope: str
    disk_only: bool = False


_loading: contextvars.ContextVar[LoadScope | None] = contextvars.ContextVar(
    "modelplex_loading", default=None
)


def current_load() -> LoadScope | None:
    return _loading.get()


def set_load(scope: LoadScope | None) -> contextvars.Token:
    return _loading.set(scope)


def reset_load(token: contextvars.Token) -> None:
    _loading.reset(token)


@dataclass(frozen=True)
class ReplicaID:
    """Which replica: Ray Serve's ``ReplicaID`` (``unique_id`` is what logs and metrics show)."""

    unique_id: str
    deployment_id: Any  # a DeploymentID: .name, .app_name


@dataclass(frozen=True)
class ReplicaContext:
    """What ``serve.get_replica_context()`` returns inside a replica, as in Ray Serve.

    Beyond Ray's fields, what the node gave the replica, in the names of Ray's own calls
    inside an actor: ``gpu_ids`` as ``ray.get_gpu_ids()`` (the node's device ids, the ones
    ``CUDA_VISIBLE_DEVICES`` names; inside the process they are ``cuda:0``, ``cuda:1``...),
    ``assigned_resources`` as ``get_runtime_context().get_assigned_resources()`` and
    ``accelerator_ids`` as ``get_accelerator_ids()``."""

    replica_id: ReplicaID
    servable_object: Any = None  # the deployment's instance, once constructed
    gpu_ids: tuple[str, ...] = ()
    assigned_resources: Mapping[str, float] = field(default_factory=dict)

    @property
    def accelerator_ids(self) -> dict[str, list[str]]:
        return {"GPU": list(self.gpu_ids)}

    @property
    def app_name(self) -> str:
        return self.replica_id.deployment_id.app_name

    @property
    def deployment(self) -> str:
        return self.replica_id.deployment_id.name

    @property
    def replica_tag(self) -> str:
        return self.replica_id.unique_id


# Set by the replica process before it constructs the deployment (one replica per process).
replica_context: ReplicaContext | None = None


def get_replica_context() -> ReplicaContext:
    """The replica this code runs in: its application, deployment, id and instance."""
    if replica_context is None:
        raise RuntimeError(
            "`serve.get_replica_context()` may only be called from within a modelplex "
            "deployment."
        )
    return replica_context


@dataclass(frozen=True)
class CacheHooks:
    """What a replica hands each model cache as it is made: told of every change of what the
    cache holds (to push it to routers); the models requests already on their way will ask
    for (evicted last); the cache's events (metrics). None: nobody listens."""

    on_change: Callable[[], None] | None = None
    wanted: Callable[[], frozenset[str]] | None = None
    events: CacheEvents | None = None


C = TypeVar("C")


class CacheHost(Protocol):
    """The replica, as a multiplexed loader's new cache sees it."""

    def new_cache(self, make: Callable[[CacheHooks], C]) -> C:
        """``make(hooks)``: the cache, built with the replica's hooks and kept by it."""
        ...


@dataclass(frozen=True)
class ReplicaHooks:
    """Set in a replica process (see ``install_replica_hooks``); empty elsewhere."""

    caches: CacheHost | None = None  # where a new cache gets its hooks; None: it gets none
    user_loop: asyncio.AbstractEventLoop | None = None  # where sync callers hop to
    app_name: str = ""  # the application the replica serves (serve.list_models' default)


replica_hooks = ReplicaHooks()


def install_replica_hooks(
    caches: CacheHost | None, user_loop: asyncio.AbstractEventLoop | None, app_name: str = ""
) -> None:
    """Called by the replica process: where new caches get their hooks, and which loop sync
    callers hop to. Kept on this module, which cloudpickle ships by reference: a user class
    pickled by value carries copies of its own modules' globals, not the modules."""
    global replica_hooks
    replica_hooks = ReplicaHooks(caches, user_loop, app_name)


def current_request() -> RequestContext | None:
    return _current.get()


def set_request(ctx: RequestContext | None) -> contextvars.Token:
    return _current.set(ctx)


def reset_request(token: contextvars.Token) -> None:
    _current.reset(token)


def get_multiplexed_model_id() -> str:
    """The model id of the request being served, or "" outside a request or without one."""
    ctx = _current.get()
    return ctx.model_id if ctx is not None else ""
