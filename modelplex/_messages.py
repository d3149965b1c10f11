"""Messages between processes: small frozen dataclasses with named fields.

Data plane (router <-> replica, one connection per pair):
    Call -> Result, or Call -> Chunk... -> Result for a streamed reply (the caller returns
    Credit as it consumes chunks); Cancel; Touch; ModelsUpdate pushed by the replica on every
    cache change; InFlight pushed while other routers' requests run there. A WebSocket is a
    streamed reply whose client also talks: SocketIn carries each client message up, and the
    replica returns Credit for those its app consumed.
Control plane (replica <-> controller, handle routers -> controller):
    ReplicaReady / ReplicaStartFailed; StopReplica -> ReplicaStopped; Ping -> Pong (health);
    Preload -> Preloaded; Reconfigure -> Reconfigured (a new user_config, in place);
    ModelEvents (what the replica's caches loaded and let go, as it happens); RouterReport;
    WatchReplicas -> ReplicaSet (long poll); WatchRoutes -> RouteTable (long poll, for proxies
    that do not live beside the controller).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from ._config import TenantPolicy


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
class GRPCRequest:
    """A gRPC call as the proxy read it: the full method name, the client's metadata and
    address, the request id it answers with. The request message itself travels in the call's
    payload, as the service's own deserializer made it at the proxy."""

    method: str  # "/package.Service/Method"
    metadata: tuple[tuple[str, Any], ...]  # (key, str or bytes for "-bin" keys)
    peer: str
    request_id: str


@dataclass(frozen=True)
class GRPCReply:
    """A gRPC method's answer, made in the replica: the serialized response message (b"" when
    it ends a stream), and what the method set on its ``grpc_context``."""

    body: bytes
    code: str = ""  # the name of a grpc.StatusCode the method set; "" for none
    details: str = ""
    trailing_metadata: tuple[tuple[str, Any], ...] = ()


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
    grpc: GRPCRequest | None = None  # a call through the gRPC proxy


@dataclass(frozen=True)
class Chunk:
    """One item of a streamed reply, sent as it is produced; the request's Result ends the
    stream. HTTP streams send the head (an ``HTTPResult`` with no body) first, then bytes."""

    request_id: int
    payload: bytes  # the pickled item


@dataclass(frozen=True)
class Credit:
    """Caller -> replica: ``n`` more chunks of stream ``request_id`` were consumed, so that
    many more may be sent (see ``_data/replies.py``). Replica -> caller, for a WebSocket: its app
    consumed ``n`` more ``SocketIn`` messages."""

    request_id: int
    n: int


@dataclass(frozen=True)
class SocketIn:
    """Caller -> replica: one ASGI message from a WebSocket's client for request
    ``request_id`` (``websocket.receive`` with its text or bytes, or ``websocket.disconnect``
    with its code), sent within the window the replica's ``Credit`` opens."""

    request_id: int
    message: Mapping[str, Any]


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


@dataclass(frozen=True)
class InFlight:
    """Replica -> one router: requests per model id running here that *other* routers sent
    (what this router sent it counts itself), so that every router can hold a deployment's
    ``max_ongoing_requests_per_model``. Sent only while several routers are connected, and
    only when the counts changed; the last one received stands."""

    counts: tuple[tuple[str, int], ...]


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
class ModelEvent:
    """One thing a replica's cache did: ``loaded`` (``seconds`` the load took), ``unloaded``
    (out of the cache, for ``reason``: ``_events.EVICTION_REASONS``) or ``load_failed``."""

    time: float  # the replica's time.time()
    kind: str
    model_id: str
    seconds: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class ModelEvents:
    """Replica -> controller: its caches' events since the last message, in order, so that the
    status and the live page miss none however briefly a model stayed."""

    replica_id: str
    events: tuple[ModelEvent, ...]


@dataclass(frozen=True)
class RouterReport:
    """Router -> controller, every half second: the load and the demand it sees.

    Counts since the previous report; ``models`` keeps the most requested ids only, and
    ``held`` is what the router believes each replica holds (model id -> seconds to load).
    ``with_model`` counts the requests placed that named a model (only those can hit or miss);
    ``latencies`` are the requests answered, as (bucket, count) (``_data/demand.py``)."""

    router_id: str
    deployment_id: DeploymentID
    ongoing: int  # this router's requests on replicas now, management calls not counted
    queued: int
    placed: int
    misses: int
    models: tuple[tuple[str, int], ...]
    held: tuple[tuple[str, tuple[tuple[str, float], ...]], ...]
    slots: int
    with_model: int = 0
    latencies: tuple[tuple[int, int], ...] = ()
    queues: tuple[tuple[str, int], ...] = ()  # the longest queues here, by model id


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
    tenants: TenantPolicy | None = None  # fairness and per-model limits (None: the defaults)
    loads_models: bool = False  # the deployment has a @serve.multiplexed loader


@dataclass(frozen=True)
class WatchRoutes:
    known_version: int


@dataclass(frozen=True)
class RouteTable:
    version: int
    routes: Mapping[str, tuple[str, DeploymentID]]  # route prefix -> (app name, ingress)
