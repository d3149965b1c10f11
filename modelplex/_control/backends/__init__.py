"""Where replicas run, behind one small interface.

A backend only starts a replica process from a ``ReplicaSpec`` and reports when it exits. The
replica itself does the rest over modelplex's own channel: it dials the controller, says it is
ready, and serves requests at the address it reports. So the local backend (OS processes) and
a cluster backend differ only in how a process comes to exist.

A backend with an ``inventory`` (local) leaves placement to the controller, which reserves
each replica's resources against it and hands the backend the replica's ``Placement`` in its
spec; one without (Ray) places replicas itself.
"""

from __future__ import annotations

from typing import Protocol

from ..._config import ClusterOptions, NodeResources
from ..._specs import ProxyInfo, ProxySpec, ReplicaSpec
from ..resources import Inventory

__all__ = ["Backend", "ProxyInfo", "ProxySpec", "ReplicaProcess", "ReplicaSpec", "make_backend"]


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
    # The node the controller places replicas on; None: the backend places them (Ray).
    inventory: Inventory | None

    async def start(self, spec: ReplicaSpec) -> ReplicaProcess: ...

    async def start_proxies(self, spec: ProxySpec) -> list[ProxyInfo]:
        """Start the proxies beyond the driver's own (one per other node); [] when there are none."""

    async def refresh_proxies(self) -> list[ProxyInfo]:
        """Those proxies now, after following nodes that joined or left (called periodically)."""

    async def close(self) -> None: ...


def make_backend(options: ClusterOptions, node: NodeResources = NodeResources()) -> Backend:
    """The backend ``options`` asks for; Ray is imported only when it is the one. ``node``:
    the local node's inventory where given (detected otherwise); on Ray, what ``ray.init``
    gets when modelplex starts Ray itself."""
    if options.cluster == "ray":
        try:
            from .ray import RayBackend
        except ImportError as exc:
            raise ImportError(
                "cluster='ray' needs Ray: pip install 'modelplex[ray]'"
            ) from exc
        return RayBackend(options.address, options.proxy_location, node)
    from ..inventory import detect_node
    from .local import LocalBackend

    return LocalBackend(detect_node(node))
