"""Where replicas run, behind one small interface.

A backend only starts a replica process from a ``ReplicaSpec`` and reports when it exits. The
replica itself does the rest over modelplex's own channel: it dials the controller, says it is
ready, and serves requests at the address it reports. So the local backend (OS processes) and
a cluster backend differ only in how a process comes to exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from .._config import ClusterOptions, HTTPOptions
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
    # Set by a backend that may put several nodes on one filesystem (Ray): keys the node's
    # disk cache directory. Empty: one directory for the machine.
    node_id: str = ""

    def __repr__(self) -> str:  # never print the secret
        return f"ReplicaSpec(replica_id={self.replica_id!r})"


@dataclass(frozen=True)
class ProxySpec:
    """What a proxy away from the driver needs: where the controller is, and how to serve."""

    controller_address: tuple[str, int]
    secret: bytes
    http_options: HTTPOptions

    def __repr__(self) -> str:  # never print the secret
        return f"ProxySpec(controller_address={self.controller_address!r})"


@dataclass(frozen=True)
class ProxyInfo:
    """One HTTP proxy: the driver's own, or one a backend started on another node."""

    node_id: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class ReplicaProcess(Protocol):
    replica_id: str
    # Set by ``wait`` when the backend knows more than an exit code ("ended with its Ray
    # actor (...)"); the controller puts it in the log line and in DeploymentFailedError.
    exit_reason: str | None

    @property
    def pid(self) -> int | None: ...

    async def wait(self) -> int | None:
        """Return when the replica has exited, with its exit code if known."""

    def kill(self) -> None:
        """Stop the replica at once (it gets no chance to clean up)."""


class Backend(Protocol):
    name: str
    node_id: str  # the node the driver runs on
    # Where the controller listens so that replicas can dial it: loopback when they all run on
    # this machine, this node's address when a backend spreads them over hosts.
    listen_host: str

    async def start(self, spec: ReplicaSpec) -> ReplicaProcess: ...

    async def start_proxies(self, spec: ProxySpec) -> list[ProxyInfo]:
        """Start the proxies beyond the driver's own (one per other node); [] when there are none."""

    async def refresh_proxies(self) -> list[ProxyInfo]:
        """Those proxies now, after following nodes that joined or left (called periodically)."""

    async def close(self) -> None: ...


def make_backend(options: ClusterOptions) -> Backend:
    """The backend ``options`` asks for; Ray is imported only when it is the one."""
    if options.cluster == "ray":
        try:
            from .ray import RayBackend
        except ImportError as exc:
            raise ImportError(
                "cluster='ray' needs Ray: pip install 'modelplex[ray]'"
            ) from exc
        return RayBackend(options.address, options.proxy_location)
    from .local import LocalBackend

    return LocalBackend()
