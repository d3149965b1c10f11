"""Model management across a deployment's replicas, from the driver.

Which replicas a model goes to is the routing policy's business, so preloading and pinning
follow it: replicas that already hold the model first, then the model's rendezvous order, the
same order a router uses to place it cold. Requests then find it where it was put.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from .._types import AdminOp, ArtifactStatus, CacheLimits, ModelStatus
from .._storage.node import local_artifacts
from .._config import check_cache_limits, check_model_weights
from .._errors import ApplicationNotFoundError, BadRequestError, DeploymentNotFoundError
from .._messages import DeploymentID
from .._model_ids import validate_model_id
from .._data.routing import rendezvous_order

# What ``place`` and ``release`` do: put a model on replicas, or take it (or its pin) away.
PLACING = frozenset({AdminOp.PRELOAD, AdminOp.PIN, AdminOp.WARM})
RELEASING = frozenset({AdminOp.UNPIN, AdminOp.UNLOAD})


class ReplicaRouter(Protocol):
    """What management uses of a deployment's router (``_data.router.Router``)."""

    async def wait_ready(self, timeout_s: float = ...) -> list[str]: ...

    def replica_models(self) -> dict[str, dict[str, Any]]: ...

    async def call_replica(self, replica_id: str, method: str, *args: Any) -> Any: ...


class Routers(Protocol):
    """This process's routers, one per deployment (``_data.routers.RouterRegistry``)."""

    def router(self, deployment_id: DeploymentID) -> ReplicaRouter: ...


class Applications(Protocol):
    """What management asks of the controller: which deployments there are, and where a
    deployment's changed cache limits are remembered for its replacements."""

    def app_names(self) -> list[str]: ...

    def deployments(self, app_name: str) -> tuple[DeploymentID, list[DeploymentID]]: ...

    def set_cache_limits(self, deployment_id: DeploymentID, limits: tuple) -> None: ...

    async def set_model_weights(self, deployment_id: DeploymentID, weights: dict[str, float]) -> None: ...


async def each_replica(
    registry: Routers, deployment_id: DeploymentID, op: AdminOp, *args: Any
) -> dict:
    """Run an admin operation on every replica of a deployment, through its router (so from a
    replica too, which has no controller of its own to ask)."""
    router = registry.router(deployment_id)
    replica_ids = await router.wait_ready()
    results = await asyncio.gather(
        *(router.call_replica(r, op.value, *args) for r in replica_ids)
    )
    return dict(zip(replica_ids, results))


async def models_of(registry: Routers, deployment_id: DeploymentID) -> list[ModelStatus]:
    out: list[ModelStatus] = []
    for statuses in (await each_replica(registry, deployment_id, AdminOp.LIST)).values():
        out.extend(statuses)
    return sorted(out, key=lambda s: (s.replica_id, s.model_id))


class ModelManager:
    def __init__(
        self, controller: Applications, registry: Routers, local_node: bool = True
    ) -> None:
        self._controller = controller
        self._registry = registry
        self._local_node = local_node  # replicas share this process's disk cache

    def _targets(self, app: str | None, deployment: str | None) -> list[DeploymentID]:
        names = self._controller.app_names()
        if app is not None and app not in names:
            raise ApplicationNotFoundError(app)
        apps = [app] if app is not None else names
        out: list[DeploymentID] = []
        for name in apps:
            ingress, every = self._controller.deployments(name)
            if deployment is None:
                out.extend(every if app is None else [ingress])
            elif DeploymentID(name, deployment) in every:
                out.append(DeploymentID(name, deployment))
            else:
                raise DeploymentNotFoundError(name, deployment)
        return out

    def _one(self, app: str, deployment: str | None) -> DeploymentID:
        return self._targets(app, deployment)[0]

    async def list_models(self, app: str | None, deployment: str | None) -> list[ModelStatus]:
        out: list[ModelStatus] = []
        for deployment_id in self._targets(app, deployment):
            out.extend(await models_of(self._registry, deployment_id))
        return sorted(out, key=lambda s: (s.replica_id, s.model_id))

    async def place(
        self, op: AdminOp, model_id: str, app: str, deployment: str | None, replicas: int
    ) -> list[str]:
        """Preload (or pin, or warm the disk tier for) ``model_id`` on ``replicas`` replicas;
        return their ids."""
        if op not in PLACING:
            raise ValueError(f"place() preloads, pins or warms, not {op}")
        validate_model_id(model_id)
        if not model_id:
            raise BadRequestError("model_id must not be empty")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise BadRequestError(f"replicas must be an int >= 1, got {replicas!r}")
        router = self._registry.router(self._one(app, deployment))
        replica_ids = await router.wait_ready()
        holders = [r for r, models in router.replica_models().items() if model_id in models["loaded"]]
        order = holders + [r for r in rendezvous_order(model_id, replica_ids) if r not in holders]
        chosen = order[:replicas]
        await asyncio.gather(*(router.call_replica(r, op.value, model_id) for r in chosen))
        return chosen

    async def list_artifacts(self) -> list[ArtifactStatus]:
        """Each node's disk cache, asked of one replica per node (and of this process's own
        node on the local backend, so a node without replicas still answers)."""
        by_node: dict[str, list[ArtifactStatus]] = {}
        if self._local_node:
            for status in local_artifacts():
                by_node.setdefault(status.node_id, []).append(status)
        calls = []
        for name in self._controller.app_names():
            for deployment_id in self._controller.deployments(name)[1]:
                router = self._registry.router(deployment_id)
                for replica_id in await router.wait_ready():
                    calls.append(router.call_replica(replica_id, AdminOp.ARTIFACTS.value))
        for result in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(result, BaseException):
                continue  # a replica that went away: another on its node may answer
            node_id, statuses = result
            by_node.setdefault(node_id, list(statuses))
        return [s for node in sorted(by_node) for s in by_node[node]]

    async def release(
        self, op: AdminOp, model_id: str, app: str, deployment: str | None
    ) -> list[str]:
        """Unpin or unload ``model_id`` everywhere; return the replicas that had it."""
        if op not in RELEASING:
            raise ValueError(f"release() unpins or unloads, not {op}")
        validate_model_id(model_id)
        deployment_id = self._one(app, deployment)
        if op is AdminOp.UNPIN:
            had = {
                s.replica_id
                for s in await self.list_models(app, deployment_id.name)
                if s.model_id == model_id and s.pinned
            }
            await each_replica(self._registry, deployment_id, op, model_id)
            return sorted(had)
        results = await each_replica(self._registry, deployment_id, op, model_id)
        return sorted(r for r, unloaded in results.items() if unloaded)

    async def configure(
        self, app: str, deployment: str | None, max_models: Any, max_bytes: Any
    ) -> None:
        check_cache_limits(max_models, max_bytes)
        deployment_id = self._one(app, deployment)
        self._controller.set_cache_limits(deployment_id, CacheLimits(max_models, max_bytes))
        await each_replica(self._registry, deployment_id, AdminOp.CONFIGURE, max_models, max_bytes)

    async def set_weights(self, app: str, deployment: str | None, weights: Any) -> dict[str, float]:
        """Replace a deployment's ``model_weights`` in place; returns them as applied."""
        try:
            checked = check_model_weights(weights)
        except (TypeError, ValueError) as exc:
            raise BadRequestError(str(exc)) from None
        await self._controller.set_model_weights(self._one(app, deployment), checked)
        return checked
