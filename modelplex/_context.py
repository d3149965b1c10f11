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
