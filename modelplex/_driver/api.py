"""The functions users call: ``serve.start``, ``serve.run``, ``serve.shutdown`` and friends."""

from __future__ import annotations

import asyncio
from typing import Any

from .. import _context
from . import runtime as _runtime
from .._aio import running_loop
from .._control.management import models_of
from .._messages import DeploymentID
from .._data.routers import current_registry
from .._specs import ProxyInfo
from .._config import ClusterOptions, HTTPOptions, NodeResources, gRPCOptions
from .._user.deployment import Application
from .._errors import ApplicationNotFoundError
from .._types import AdminOp, ArtifactStatus, ModelStatus, ServeStatus
from .._user.handle import DeploymentHandle


def start(
    http_options: HTTPOptions | dict[str, Any] | None = None,
    grpc_options: gRPCOptions | dict[str, Any] | None = None,
    *,
    cluster: str = "local",
    address: str | None = None,
    proxy_location: str = "head_node",
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    resources: dict[str, float] | None = None,
) -> None:
    """Start modelplex in this process (``serve.run`` does it for you with the defaults).

    ``http_options`` sets where the proxy listens, e.g. ``{"host": "127.0.0.1", "port": 8000}``.
    ``grpc_options`` (Ray's ``gRPCOptions`` or its fields) serves the services it names over
    gRPC too, on every proxy (see docs/apps.md).
    ``cluster="ray"`` runs replicas as actors on the Ray cluster at ``address`` (see
    docs/cluster.md); ``proxy_location="every_node"`` adds a proxy on each other node.
    ``num_cpus``, ``num_gpus`` and ``resources`` are the node's inventory, as ``ray.init``
    takes them: the local backend places replicas on it (detected when not given; see
    docs/hardware.md); on Ray they go to the ``ray.init`` modelplex makes.
    """
    wanted = ClusterOptions(cluster, address, proxy_location)
    node = NodeResources(num_cpus, num_gpus, resources)
    runtime = _runtime.current_runtime()
    if runtime is not None:
        if http_options is not None and HTTPOptions.from_value(http_options) != runtime.http_options:
            raise RuntimeError(
                "modelplex is already running with other http_options; call serve.shutdown() "
                "first"
            )
        if grpc_options is not None and gRPCOptions.from_value(grpc_options) != runtime.grpc_options:
            raise RuntimeError(
                "modelplex is already running with other grpc_options; call serve.shutdown() "
                "first"
            )
        if wanted != runtime.cluster:
            raise RuntimeError(
                f"modelplex is already running on cluster={runtime.cluster.cluster!r}; call "
                "serve.shutdown() first"
            )
        if node.given and node != runtime.node:
            raise RuntimeError(
                "modelplex is already running with another node inventory "
                f"({runtime.node.options() or 'detected'}); call serve.shutdown() first"
            )
        return
    _runtime.get_runtime(http_options, wanted, grpc_options, node=node)


def list_proxies() -> list[ProxyInfo]:
    """Every proxy: the one in this process first, then one per other node if asked for; each
    with its HTTP port and, where gRPC is served, its gRPC port."""
    return list(_running().proxies)


def run(
    target: Application,
    *,
    name: str = "default",
    route_prefix: str = "/",
    blocking: bool = False,
) -> DeploymentHandle:
    """Deploy ``target`` as application ``name`` and return a handle to its ingress.

    Returns once every replica is ready. Running the same name again replaces the application:
    the new replicas take over, the old ones drain and stop and unload their models.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not isinstance(route_prefix, str) or not route_prefix.startswith("/"):
        raise ValueError(f"route_prefix must start with '/', got {route_prefix!r}")
    if len(route_prefix) > 1 and route_prefix.endswith("/"):
        raise ValueError(f"route_prefix must not end with '/', got {route_prefix!r}")
    handle = _runtime.get_runtime().run(target, name, route_prefix)
    if blocking:
        _block_forever()
    return handle


def _block_forever() -> None:
    import threading

    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        shutdown()


def delete(name: str) -> None:
    """Stop application ``name`` and unload its models."""
    runtime = _runtime.current_runtime()
    if runtime is not None:
        runtime.delete(name)


def shutdown() -> None:
    """Stop every application, unload every model and stop the proxy."""
    _runtime.shutdown()


def _running() -> "_runtime.Runtime":
    runtime = _runtime.current_runtime()
    if runtime is None:
        raise RuntimeError("modelplex is not running; call serve.run() first")
    return runtime


def list_models(app_name: str | None = None, deployment_name: str | None = None) -> list[ModelStatus]:
    """Which replica holds which model (loaded or loading), with size, idle time and pins.

    Without ``app_name``, every deployment of every application. Inside a deployment (an
    OpenAI-style ``GET /v1/models``, say) name the deployment; the application defaults to the
    caller's own. It blocks: from an ``async`` method, ``await asyncio.to_thread(...)`` it."""
    runtime = _runtime.current_runtime()
    registry = current_registry()
    if runtime is None and registry is not None:
        if deployment_name is None:
            raise ValueError("inside a deployment, serve.list_models() needs deployment_name")
        if running_loop() is registry.loop:
            raise RuntimeError("serve.list_models() would deadlock on this loop")
        deployment_id = DeploymentID(
            app_name or _context.replica_hooks.app_name or "default", deployment_name
        )
        return asyncio.run_coroutine_threadsafe(
            models_of(registry, deployment_id), registry.loop
        ).result()
    runtime = _running()
    return runtime.call(runtime.models.list_models(app_name, deployment_name))


def status() -> ServeStatus:
    """Applications, their deployments (hit rate and load times over the last minute), each
    deployment's replicas (state, node, pid, running and queued requests) and their models."""
    runtime = _running()
    return runtime.call(runtime.status())


def preload_model(
    model_id: str,
    *,
    app_name: str = "default",
    deployment_name: str | None = None,
    num_replicas: int = 1,
    disk_only: bool = False,
) -> list[str]:
    """Load ``model_id`` on ``num_replicas`` replicas now, where routing will look for it.

    ``deployment_name`` defaults to the application's ingress. Returns the replica ids.
    ``disk_only=True`` only warms the disk tier of those replicas' nodes: the loader runs until
    its first ``serve.fetch`` has the artifact on disk, then stops; no memory slot is taken
    and nothing is evicted (see docs/storage.md)."""
    if not isinstance(disk_only, bool):
        raise TypeError(f"disk_only must be a bool, got {disk_only!r}")
    runtime = _running()
    op = AdminOp.WARM if disk_only else AdminOp.PRELOAD
    return runtime.call(runtime.models.place(op, model_id, app_name, deployment_name, num_replicas))


def list_artifacts() -> list[ArtifactStatus]:
    """What each node has in its disk cache: the artifacts ``serve.fetch`` put there.

    While modelplex runs, one replica per node reports its node (and the driver its own);
    otherwise this process's node alone. Sorted by node, then least recently used first."""
    runtime = _runtime.current_runtime()
    if runtime is None:
        from .._storage.node import local_artifacts

        return local_artifacts()
    return runtime.call(runtime.models.list_artifacts())


def pin_model(
    model_id: str,
    *,
    app_name: str = "default",
    deployment_name: str | None = None,
    num_replicas: int = 1,
) -> list[str]:
    """Preload ``model_id`` and pin it: it is never evicted until unpinned or unloaded."""
    runtime = _running()
    return runtime.call(
        runtime.models.place(AdminOp.PIN, model_id, app_name, deployment_name, num_replicas)
    )


def unpin_model(
    model_id: str, *, app_name: str = "default", deployment_name: str | None = None
) -> list[str]:
    """Make ``model_id`` an ordinary LRU candidate again; returns the replicas that had it pinned."""
    runtime = _running()
    return runtime.call(runtime.models.release(AdminOp.UNPIN, model_id, app_name, deployment_name))


def unload_model(
    model_id: str, *, app_name: str = "default", deployment_name: str | None = None
) -> list[str]:
    """Unload ``model_id`` from every replica (after requests using it finish)."""
    runtime = _running()
    return runtime.call(runtime.models.release(AdminOp.UNLOAD, model_id, app_name, deployment_name))


def configure_multiplexing(
    *,
    app_name: str = "default",
    deployment_name: str | None = None,
    max_num_models_per_replica: int | None = None,
    max_memory_bytes: int | None = None,
) -> None:
    """Change a running deployment's cache limits without restarting its replicas.

    Shrinking evicts at once; replicas started later (replacements) get the new limits too.
    A redeploy goes back to the limits in the code."""
    runtime = _running()
    runtime.call(
        runtime.models.configure(
            app_name, deployment_name, max_num_models_per_replica, max_memory_bytes
        )
    )


def set_model_weights(
    model_weights: dict[str, float], *, app_name: str = "default",
    deployment_name: str | None = None,
) -> dict[str, float]:
    """Replace a running deployment's ``model_weights`` (its share of the replicas per model
    id under fairness; an id not named weighs 1) without restarting anything. Every router
    applies them within moments; a redeploy goes back to the code's or the config's."""
    runtime = _running()
    return runtime.call(runtime.models.set_weights(app_name, deployment_name, model_weights))


def get_app_handle(name: str = "default") -> DeploymentHandle:
    runtime = _running()
    for app_name, ingress in runtime.controller.routes().values():
        if app_name == name:
            return DeploymentHandle(ingress.name, app_name)
    raise ApplicationNotFoundError(name)


def get_deployment_handle(deployment_name: str, app_name: str = "default") -> DeploymentHandle:
    return DeploymentHandle(deployment_name, app_name)
