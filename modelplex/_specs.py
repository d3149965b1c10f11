"""What it takes to start a replica or a proxy somewhere: plain data, shared by every backend.

Its own module so that the replica, the proxies and the backends import it without importing
each other.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from ._config import DeploymentConfig, HTTPOptions, LoggingConfig, MetricsOptions, gRPCOptions
from ._messages import DeploymentID
from ._types import CacheLimits

if TYPE_CHECKING:  # a layer above; a ReplicaSpec only carries one
    from ._storage.config import StorageConfig


@dataclass(frozen=True)
class LoaderSpec:
    """One ``@serve.multiplexed`` loader of a deployment class."""

    attr: str  # its name on the class
    max_models: int  # its max_num_models_per_replica


@dataclass(frozen=True)
class DeploymentInterface:
    """What a deployment class declares, recorded once when ``@serve.deployment`` builds it,
    so that nobody scans the class again: the replica's admin finds the loaders by name, the
    replica calls an ingress app's entry points only on one, and config deploys read the
    loader's limit without unpickling the class. A function deployment has none of these."""

    loaders: tuple[LoaderSpec, ...] = ()  # by name, as ``dir`` lists them
    batch_methods: tuple[str, ...] = ()  # the ``@serve.batch`` methods, by name
    ingress: bool = False  # a ``@serve.ingress`` class: an ASGI app answers its HTTP requests

    @property
    def max_models(self) -> int | None:
        """The first loader's ``max_num_models_per_replica`` (a config's default), or None
        without a loader."""
        return self.loaders[0].max_models if self.loaders else None


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment of an application, as ``serve.run`` hands it to the controller."""

    config: DeploymentConfig
    payload: bytes  # cloudpickled (class, args, kwargs)
    interface: DeploymentInterface = DeploymentInterface()


@dataclass(frozen=True)
class Placement:
    """What a replica was given on its node: where ``serve.get_replica_context()`` reads its
    devices and resources, and what the local backend sets in its environment.

    ``gpu_ids`` are the node's device ids (``CUDA_VISIBLE_DEVICES`` names exactly these);
    ``assigned`` the amounts reserved for it, as Ray's ``get_assigned_resources()`` reports
    them (only what is above 0); ``threads`` what its thread pools get unless the user set
    them; ``env_vars`` its ``runtime_env`` variables, applied last."""

    gpu_ids: tuple[str, ...] = ()
    assigned: Mapping[str, float] = field(default_factory=dict)
    threads: int = 1
    env_vars: Mapping[str, str] = field(default_factory=dict)


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
    cache_limits: CacheLimits | None = None  # set at run time (serve.configure_multiplexing)
    user_config: Any = None  # the deployment's current one: reconfigure() gets it before requests
    # Set by a backend that may put several nodes on one filesystem (Ray): keys the node's
    # disk cache directory. Empty: one directory for the machine.
    node_id: str = ""
    logging_config: LoggingConfig = LoggingConfig()
    # Metrics on, with the instance's directory (``_obs/folder.py``): the replica writes under its
    # node's folder there. None: metrics are off.
    metrics: MetricsOptions | None = None
    interface: DeploymentInterface = DeploymentInterface()  # the deployment's, as built
    # The node's disk tier, as the driver read it once (its node_id may be replaced by
    # ``node_id`` above). None: the replica reads its own environment.
    storage: StorageConfig | None = None
    # Set by a backend that places replicas on the node itself (local): its devices, its
    # reserved resources and its threads. None: the backend's scheduler decides (Ray).
    placement: Placement | None = None

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
    grpc_options: gRPCOptions | None = None  # gRPC beside HTTP, where they name services
    # The driver's import path, as a replica gets it: the gRPC services it names import there.
    sys_path: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never print the secret
        return f"ProxySpec(controller_address={self.controller_address!r})"


@dataclass(frozen=True)
class ProxyInfo:
    """One proxy: the driver's own, or one a backend started on another node."""

    node_id: str
    host: str
    port: int
    grpc_port: int | None = None  # where it serves gRPC; None: it does not (or not known)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def use_sys_path(paths: tuple[str, ...]) -> None:
    """Put the driver's import path in front of this process's (a replica, a node proxy), so
    the user's modules import where they were written."""
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)
