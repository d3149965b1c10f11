"""Per-request context, carried by a context variable.

A context variable (not a thread-local or an attribute on the replica) makes the model id
belong to the request: concurrent requests on one replica each see their own id, and a handle
call made with another id never changes the caller's.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any, Callable


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
    """What ``serve.get_replica_context()`` returns inside a replica, as in Ray Serve."""

    replica_id: ReplicaID
    servable_object: Any = None  # the deployment's instance, once constructed

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


@dataclass
class ReplicaHooks:
    """Set in a replica process (see ``_multiplex.install_replica_hooks``)."""

    on_new_cache: Callable[[Any], None] | None = None
    user_loop: Any = None
    app_name: str = ""  # the application the replica serves (serve.list_models' default)


replica_hooks = ReplicaHooks()


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
