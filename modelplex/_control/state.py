"""What the controller knows: its applications, their deployments' targets, and each replica.

Plain records shared by the controller's parts (the reconcile loop, the replica runner, the
health checks, the publisher, the control channel). The loop is the only part that decides;
the others record what happened here and wake it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from .._messages import DeploymentID, Pong
from .._specs import DeploymentSpec, Placement
from .._data.channel import Channel
from .figures import Stats
from .backends import ReplicaProcess
from .reconcile import History, Phase, ReplicaObservation, Target

__all__ = ["App", "Deployment", "DeploymentObservation", "Replica", "ReplicaState"]


@dataclass(frozen=True)
class ReplicaState:
    replica_id: str
    phase: str  # "pending", "starting", "running" or "stopping"
    pid: int | None
    waiting_for: str = ""  # pending: what is short on the node ("1 GPU: 0 of 2 free")
    gpu_ids: tuple[str, ...] = ()  # the node's devices it was given


@dataclass(frozen=True)
class DeploymentObservation:
    target_replicas: int
    settled: bool
    replicas: tuple[ReplicaState, ...]
    stats: Stats
    message: str = ""  # why it is not settled, when the controller knows (a failed start)


@dataclass
class Replica:
    replica_id: str
    spec: DeploymentSpec
    code_version: int
    phase: Phase
    since: float
    process: ReplicaProcess | None = None
    address: tuple[str, int] | None = None
    control: Channel | None = None
    error: str = ""  # what the replica said when it could not start
    pid: int | None = None  # as the replica reported it when ready
    retiring: bool = False  # handing its hot models to the survivors before it stops
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    pong: asyncio.Event = field(default_factory=asyncio.Event)
    last_pong: Pong | None = None
    replies: dict[int, asyncio.Future] = field(default_factory=dict)  # Preload, Reconfigure by seq
    waiting_for: str = ""  # pending: what is short on the node
    placement: Placement | None = None  # what the node gave it (None: the backend places)

    def observe(self) -> ReplicaObservation:
        return ReplicaObservation(self.replica_id, self.phase, self.code_version, self.since)

    def stopping(self, now: float) -> None:
        self.phase, self.since = Phase.STOPPING, now


@dataclass
class Deployment:
    id: DeploymentID
    spec: DeploymentSpec
    code_version: int = 1
    previous: tuple[DeploymentSpec, int] | None = None  # the last version that ran whole
    removed: bool = False  # target: no replicas, then forget the deployment
    replicas: dict[str, Replica] = field(default_factory=dict)
    history: History = field(default_factory=History)
    last_error: tuple[str, str] = ("", "")  # (message, traceback) of the last failed start
    waiters: list[asyncio.Future] = field(default_factory=list)
    published: tuple = ()  # what the last published replica set held
    scaled_to: int | None = None  # the autoscaler's count, when the deployment autoscales
    handed: dict[str, int] = field(default_factory=dict)  # preloads per survivor, this scale-down

    def wanted(self) -> int:
        config = self.spec.config
        if config.autoscaling_config is None:
            return config.num_replicas
        if self.scaled_to is None:
            return config.initial_replicas
        scaling = config.autoscaling_config
        return min(max(self.scaled_to, scaling.min_replicas), scaling.max_replicas)

    def target(self) -> Target:
        return Target(0 if self.removed else self.wanted(), self.code_version)

    def settled(self) -> bool:
        """The target is met and no other replica is left, not even one stopping."""
        want = self.target().num_replicas
        return len(self.replicas) == want and all(
            r.phase is Phase.RUNNING and r.code_version == self.code_version
            for r in self.replicas.values()
        )

    def running(self) -> list[Replica]:
        """Its running replicas of the target's code version."""
        return [
            r for r in self.replicas.values()
            if r.phase is Phase.RUNNING and r.code_version == self.code_version
        ]


@dataclass
class App:
    name: str
    route_prefix: str
    ingress: DeploymentID
    deployments: list[DeploymentID]
    deployed_at: float = 0.0  # Unix time its last deploy began (Ray's last_deployed_time_s)
