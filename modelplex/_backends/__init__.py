"""Where replicas run, behind one small interface.

A backend only starts a replica process from a ``ReplicaSpec`` and reports when it exits. The
replica itself does the rest over modelplex's own channel: it dials the controller, says it is
ready, and serves requests at the address it reports. So the local backend (OS processes) and
a cluster backend differ only in how a process comes to exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from .._messages import DeploymentID


@dataclass(frozen=True)
class ReplicaSpec:
    replica_id: str
    deployment_id: DeploymentID
    payload: bytes  # cloudpickled (class, init args, init kwargs)
    max_ongoing: int
    controller_address: tuple[str, int]
    secret: bytes
    log_dir: str
    bind_host: str = "127.0.0.1"
    sys_path: tuple[str, ...] = ()
    cwd: str = ""
    ray_actor_options: Mapping[str, Any] | None = None
    cache_limits: tuple | None = None  # (max models, max bytes) set at run time

    def __repr__(self) -> str:  # never print the secret
        return f"ReplicaSpec(replica_id={self.replica_id!r})"


class ReplicaProcess(Protocol):
    replica_id: str

    @property
    def pid(self) -> int | None: ...

    async def wait(self) -> int | None:
        """Return when the replica has exited, with its exit code if known."""

    def kill(self) -> None:
        """Stop the replica at once (it gets no chance to clean up)."""


class Backend(Protocol):
    name: str

    async def start(self, spec: ReplicaSpec) -> ReplicaProcess: ...

    async def close(self) -> None: ...
