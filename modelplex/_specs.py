"""What it takes to start a replica or a proxy somewhere: plain data, shared by every backend.

Its own module so that the replica, the proxies and the backends import it without importing
each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ._config import HTTPOptions, LoggingConfig, MetricsOptions
from ._messages import DeploymentID


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
    user_config: Any = None  # the deployment's current one: reconfigure() gets it before requests
    # Set by a backend that may put several nodes on one filesystem (Ray): keys the node's
    # disk cache directory. Empty: one directory for the machine.
    node_id: str = ""
    logging_config: LoggingConfig = LoggingConfig()
    # Metrics on, with the instance's directory (``_metrics``): the replica writes under its
    # node's folder there. None: metrics are off.
    metrics: MetricsOptions | None = None

    def __repr__(self) -> str:  # never print the secret
        return f"ReplicaSpec(replica_id={self.replica_id!r})"


@dataclass(frozen=True)
class ProxySpec:
    """What a proxy away from the driver needs: where the controller is, and how to serve."""

    controller_address: tuple[str, int]
    secret: bytes
    http_options: HTTPOptions
    metrics: MetricsOptions | None = None  # as ReplicaSpec's; the proxy serves its node's folder
    node_id: str = ""  # set where the proxy runs: keys its node's metrics folder

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
