"""Messages between processes: small frozen dataclasses with named fields.

Data plane (router <-> replica, one connection per pair):
    Call -> Result, or Call -> Chunk... -> Result for a streamed reply (the caller returns
    Credit as it consumes chunks); Cancel; Touch; ModelsUpdate pushed by the replica on every
    cache change.
Control plane (replica <-> controller, handle routers -> controller):
    ReplicaReady / ReplicaStartFailed; StopReplica -> ReplicaStopped; Ping -> Pong (health);
    Preload -> Preloaded; Reconfigure -> Reconfigured (a new user_config, in place);
    WatchReplicas -> ReplicaSet (long poll); WatchRoutes -> RouteTable (long poll, for proxies
    that do not live beside the controller).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class DeploymentID:
    app: str
    name: str

    def __str__(self) -> str:
        return f"{self.app}_{self.name}"

    @property
    def app_name(self) -> str:  # Ray Serve's name for it
        return self.app


# ---- data plane -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HTTPRequest:
    """An HTTP request as the proxy read it: the picklable part of the ASGI scope and the body."""

    scope: Mapping[str, Any]
    body: bytes


@dataclass(frozen=True)
class HTTPResult:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


@dataclass(frozen=True)
class Call:
    """One request. Arguments travel pickled a second time (``payload``) so that a value the
    replica cannot unpickle fails that request alone, never the connection it shares."""

    request_id: int
    method: str
    payload: bytes = b""  # cloudpickled (args, kwargs); b"" for none
    model_id: str = ""
    http: HTTPRequest | None = None
    trace_id: str = ""
    stream: bool = False  # handle.options(stream=True): the method must return a generator


@dataclass(frozen=True)
class Chunk:
    """One item of a streamed reply, sent as it is produced; the request's Result ends the
    stream. HTTP streams send the head (an ``HTTPResult`` with no body) first, then bytes."""

    request_id: int
    payload: bytes  # the pickled item


@dataclass(frozen=True)
class Credit:
    """Caller -> replica: ``n`` more chunks of stream ``request_id`` were consumed, so that
    many more may be sent (see ``_streams``)."""

    request_id: int
    n: int


@dataclass(frozen=True)
class Result:
    request_id: int
    ok: bool
    payload: bytes  # the pickled return value, or the pickled exception when not ok
    traceback: str = ""  # the remote traceback when not ok


@dataclass(frozen=True)
class Cancel:
    request_id: int


@dataclass(frozen=True)
class Touch:
    """Requests for ``model_id`` wait at a router for this busy replica: count it as used."""

    model_id: str


@dataclass(frozen=True)
class ModelsUpdate:
    """What a replica holds; sent on connect and whenever its caches change."""

    replica_id: str
    version: int
    loaded: Mapping[str, float]  # model id -> seconds its load took
    loading: tuple[str, ...]
    has_room: bool
    slots: int = -1  # models its caches keep in all (-1: no count limit)


# ---- control plane --------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaReady:
    replica_id: str
    address: tuple[str, int]
    pid: int


@dataclass(frozen=True)
class ReplicaStartFailed:
    replica_id: str
    error: str
    traceback: str


@dataclass(frozen=True)
class StopReplica:
    timeout_s: float
    wait_loop_s: float = 2.0  # how often the replica says what still runs while it drains
    reason: str = "shutdown"  # "redeploy", "downscale" or "shutdown": for the eviction metrics



@dataclass(frozen=True)
class Reconfigure:
    """Controller -> replica: call the user's ``reconfigure(user_config)`` now."""

    seq: int
    user_config: Any


@dataclass(frozen=True)
class Reconfigured:
    seq: int
    ok: bool
    error: str = ""  # "Type: message" of what reconfigure raised
    traceback: str = ""


@dataclass(frozen=True)
class ReplicaStopped:
    replica_id: str


@dataclass(frozen=True)
class Preload:
    """Controller -> replica: load ``model_id`` now (its holder is about to stop)."""

    seq: int
    model_id: str


@dataclass(frozen=True)
class Preloaded:
    seq: int
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class RouterReport:
    """Router -> controller, every half second: the load and the demand it sees.

    Counts since the previous report; ``models`` keeps the most requested ids only, and
    ``held`` is what the router believes each replica holds (model id -> seconds to load)."""

    router_id: str
    deployment_id: DeploymentID
    ongoing: int
    queued: int
    placed: int
    misses: int
    models: tuple[tuple[str, int], ...]
    held: tuple[tuple[str, tuple[tuple[str, float], ...]], ...]
    slots: int


@dataclass(frozen=True)
class Ping:
    seq: int
    timeout_s: float = 30.0  # how long the user's check_health may take


@dataclass(frozen=True)
class Pong:
    """The control loop answers; ``healthy`` is the user's ``check_health`` verdict, if any."""

    seq: int
    healthy: bool = True
    error: str = ""


@dataclass(frozen=True)
class ReplicaInfo:
    replica_id: str
    address: tuple[str, int]
    max_ongoing: int


@dataclass(frozen=True)
class WatchReplicas:
    deployment_id: DeploymentID
    known_version: int


@dataclass(frozen=True)
class ReplicaSet:
    deployment_id: DeploymentID
    version: int
    replicas: tuple[ReplicaInfo, ...]
    max_queued: int = -1
    exists: bool = True
    max_replicas_per_model: int | None = None


@dataclass(frozen=True)
class WatchRoutes:
    known_version: int


@dataclass(frozen=True)
class RouteTable:
    version: int
    routes: Mapping[str, tuple[str, DeploymentID]]  # route prefix -> (app name, ingress)
