"""Shared vocabulary with no behaviour: the ASGI aliases, the replica's management operations,
and the records that status and management hand between the replica, the controller, the proxy
and the user.

Records here are plain frozen dataclasses, so any layer may build or read them and they pickle
across processes as they are.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

__all__ = [
    "ADMIN_PREFIX", "ASGIApp", "AdminOp", "ApplicationStatus", "ArtifactStatus", "CacheLimits", "DeploymentStatus",
    "Message", "ModelStatus", "Receive", "ReplicaProbe", "ReplicaStatus", "STATS_WINDOW_S",
    "Scope", "Send", "ServeStatus", "status_dict", "status_dicts",
]

# ---- ASGI ---------------------------------------------------------------------------------------

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# ---- a replica's management operations ------------------------------------------------------------

# What the reserved method names begin with: a call to one is management, not the user's code.
ADMIN_PREFIX = "__modelplex_"


class AdminOp(enum.Enum):
    """A replica's management operations; each value is the reserved method name a router
    calls on the wire. Parsed once where a request names one (an HTTP route, ``serve.pin_model``)
    and passed on typed down to the replica, which dispatches on it."""

    LIST = "__modelplex_models__"
    PROBE = "__modelplex_probe__"
    PRELOAD = "__modelplex_preload__"
    WARM = "__modelplex_warm__"  # preload's disk tier alone (``disk_only``)
    PIN = "__modelplex_pin__"
    UNPIN = "__modelplex_unpin__"
    UNLOAD = "__modelplex_unload__"
    CONFIGURE = "__modelplex_configure__"
    ARTIFACTS = "__modelplex_artifacts__"


# ---- models and artifacts -----------------------------------------------------------------------

@dataclass(frozen=True)
class ModelStatus:
    """One model on one replica, as ``serve.list_models`` reports it."""

    replica_id: str
    model_id: str
    state: str  # "loaded" or "loading"
    size_bytes: int | None = None
    idle_s: float | None = None  # seconds since its last use
    load_s: float | None = None
    pinned: bool = False
    in_use: int = 0


@dataclass(frozen=True)
class ArtifactStatus:
    """One artifact in one node's disk cache, as ``serve.list_artifacts`` reports it."""

    node_id: str
    uri: str  # without credentials: no userinfo, no query string
    kind: str  # "file" or "directory"
    size_bytes: int
    last_used: float  # Unix time of its last fetch
    held: bool  # a model loaded from it is in memory in a live replica on the node


@dataclass(frozen=True)
class ReplicaProbe:
    """What a replica says of itself for ``serve.status``: where it runs, its load, its models."""

    node: str
    pid: int
    ongoing: int  # requests running in the replica (management calls, this probe, not counted)
    models: tuple[ModelStatus, ...]


@dataclass(frozen=True)
class CacheLimits:
    max_models: Any
    max_bytes: Any


# ---- serve.status() ---------------------------------------------------------------------------------

# What a deployment's figures in ``serve.status`` cover: the last minute.
STATS_WINDOW_S = 60.0


@dataclass(frozen=True)
class ReplicaStatus:
    replica_id: str
    state: str  # "pending", "starting", "running" or "stopping"
    node: str | None  # the node it runs on (a Ray node id, or the host name); None until it runs
    pid: int | None
    ongoing: int | None  # requests running in it; None when it did not answer
    queued: int  # requests waiting at routers for its deployment (not yet on any replica)
    models: tuple[ModelStatus, ...] = ()
    # "pending": what it waits for on the node, e.g. "1 accel: 0 of 2 free"
    waiting_for: str = ""
    gpu_ids: tuple[str, ...] = ()  # the node's devices it was given (local backend)


@dataclass(frozen=True)
class DeploymentStatus:
    name: str
    status: str  # "HEALTHY" (its target met) or "UPDATING", as Ray Serve says
    target_replicas: int
    ongoing: int  # requests running on its replicas now, as they count them
    queued: int
    # Over the last ``ServeStatus.window_s`` seconds, from the routers' reports:
    requests: int
    hit_rate: float | None  # of requests that named a model, the share placed where it was loaded
    # ... and from the replicas' own events: every load, with its time.
    loads: int
    load_p50_s: float | None
    load_p99_s: float | None
    replicas: tuple[ReplicaStatus, ...] = ()
    # Ray's fields: replicas by Ray's state names ("STARTING", "RUNNING", "STOPPING"), and
    # why a deployment is not healthy ("" when it is).
    replica_states: dict[str, int] = field(default_factory=dict)
    message: str = ""
    # The longest queues at its routers now: model id -> requests waiting, most first.
    longest_queues: dict[str, int] = field(default_factory=dict)
    # The requests' latencies, as their routers timed them (from the router taking a request
    # to its reply: waiting, a load if it missed, and the call), apart from the load times.
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None


@dataclass(frozen=True)
class ApplicationStatus:
    name: str
    status: str  # "RUNNING" or "DEPLOYING"
    route_prefix: str
    ingress: str
    deployments: dict[str, DeploymentStatus]
    message: str = ""  # Ray's: why it is not running ("" when it is)
    last_deployed_time_s: float = 0.0  # Unix time of its last serve.run or config deploy


@dataclass(frozen=True)
class ServeStatus:
    """What ``serve.status()`` returns and ``GET /-/status`` sends as JSON."""

    applications: dict[str, ApplicationStatus]
    window_s: float = STATS_WINDOW_S
    # Ray's: each proxy's node, and its proxy's status ("HEALTHY": it answers).
    proxies: dict[str, str] = field(default_factory=dict)
    # The node's "total" and "available" resources, as Ray's cluster_resources() and
    # available_resources() name them, when modelplex places replicas (local); else {}.
    resources: dict[str, dict[str, float]] = field(default_factory=dict)


def status_dict(status: ServeStatus) -> dict[str, Any]:
    return dataclasses.asdict(status)


def status_dicts(statuses: list[Any]) -> list[dict]:
    return [dataclasses.asdict(s) for s in statuses]
