"""Which applications exist and what each deployment should run: the controller's targets.

No I/O and no waiting: a deploy changes a target here, then wakes the reconcile loop, which
closes the gap. An in-place change (new counts, limits or ``user_config``) keeps the replicas;
anything else is a new code version that the loop rolls out.
"""

from __future__ import annotations

import dataclasses

from .._errors import ApplicationNotFoundError, DeploymentNotFoundError
from .._messages import DeploymentID
from .._specs import DeploymentSpec
from .._types import CacheLimits
from .reconcile import History
from .state import App, Deployment

__all__ = ["Targets"]

# What a replica is built from: a change to any of these needs new replicas.
_REPLICA_FIELDS = ("max_ongoing_requests", "ray_actor_options", "logging_config")


class Targets:
    def __init__(self) -> None:
        self.apps: dict[str, App] = {}
        self.deployments: dict[DeploymentID, Deployment] = {}
        self._cache_limits: dict[DeploymentID, CacheLimits] = {}

    def routes(self) -> dict[str, tuple[str, DeploymentID]]:
        """route prefix -> (app name, ingress deployment)."""
        return {app.route_prefix: (app.name, app.ingress) for app in self.apps.values()}

    def app(self, name: str) -> App:
        app = self.apps.get(name)
        if app is None:
            raise ApplicationNotFoundError(name)
        return app

    def check_prefix(self, name: str, route_prefix: str) -> None:
        for other in self.apps.values():
            if other.name != name and other.route_prefix == route_prefix:
                raise ValueError(
                    f"route_prefix {route_prefix!r} is already used by application "
                    f"{other.name!r}"
                )

    def cache_limits(self, deployment_id: DeploymentID) -> CacheLimits | None:
        return self._cache_limits.get(deployment_id)

    def set_cache_limits(self, deployment_id: DeploymentID, limits: CacheLimits) -> None:
        self._cache_limits[deployment_id] = limits

    def access_log(self, deployment_id: DeploymentID) -> bool:
        deployment = self.deployments.get(deployment_id)
        logging_config = deployment.spec.config.logging_config if deployment else None
        return logging_config is None or logging_config.enable_access_log

    def set_model_weights(self, deployment_id: DeploymentID, weights: dict[str, float]) -> Deployment:
        """New ``model_weights`` for a running deployment, in place (routers get them with the
        next replica set); a redeploy goes back to what the code or config says."""
        deployment = self.deployments.get(deployment_id)
        if deployment is None or deployment.removed:
            raise DeploymentNotFoundError(deployment_id.app, deployment_id.name)
        spec = dataclasses.replace(
            deployment.spec, config=deployment.spec.config.replace(model_weights=weights)
        )
        deployment.spec = spec
        for replica in deployment.replicas.values():
            if replica.code_version == deployment.code_version:
                replica.spec = spec
        return deployment

    def set_target(
        self, deployment_id: DeploymentID, spec: DeploymentSpec, in_place: bool = False
    ) -> tuple[Deployment, DeploymentSpec | None]:
        """A new deployment, or a new code version of one (the loop rolls it out), or, in
        place, new counts, limits or ``user_config`` for the replicas it has. With the spec it
        replaced when in place (None otherwise).

        A change of ``user_config`` alone is in place even for ``serve.run`` (Ray starts new
        replicas): the replicas keep their loaded models."""
        deployment = self.deployments.get(deployment_id)
        if (
            deployment is not None
            and not deployment.removed
            and (
                (in_place and _same_replicas(deployment.spec, spec))
                or _only_user_config_changed(deployment.spec, spec)
            )
        ):
            old, deployment.spec = deployment.spec, spec
            if old.config.user_config == spec.config.user_config:
                for replica in deployment.replicas.values():
                    if replica.code_version == deployment.code_version:
                        replica.spec = spec
            return deployment, old
        self._cache_limits.pop(deployment_id, None)  # a redeploy starts from the code's limits
        if deployment is None:
            deployment = Deployment(deployment_id, spec)
            self.deployments[deployment_id] = deployment
        else:
            if deployment.history.healthy_once and not deployment.removed:
                deployment.previous = (deployment.spec, deployment.code_version)
            deployment.spec = spec
            deployment.code_version += 1
            deployment.removed = False
            deployment.history = History()
        return deployment, None

    def roll_back(self, deployment: Deployment) -> None:
        """A deploy failed or was cancelled: go back to the version that ran, or away."""
        if deployment.previous is not None:
            deployment.spec, deployment.code_version = deployment.previous
            deployment.history = History(healthy_once=True)
        else:
            deployment.removed = True

    def remove(self, deployment_ids: list[DeploymentID]) -> list[Deployment]:
        """Target no replicas for these; the loop forgets each once its replicas are gone."""
        gone = []
        for deployment_id in deployment_ids:
            deployment = self.deployments.get(deployment_id)
            if deployment is not None:
                deployment.removed = True
                gone.append(deployment)
        return gone

    def forget(self, deployment: Deployment) -> bool:
        """Drop a removed deployment whose replicas are gone; False if it was deployed again."""
        if self.deployments.get(deployment.id) is not deployment:
            return False
        del self.deployments[deployment.id]
        self._cache_limits.pop(deployment.id, None)
        return True


def _same_replicas(old: DeploymentSpec, new: DeploymentSpec) -> bool:
    return old.payload == new.payload and all(
        getattr(old.config, f) == getattr(new.config, f) for f in _REPLICA_FIELDS
    )


def _only_user_config_changed(old: DeploymentSpec, new: DeploymentSpec) -> bool:
    return (
        old.payload == new.payload
        and old.config.user_config != new.config.user_config
        and old.config.replace(user_config=None) == new.config.replace(user_config=None)
    )
