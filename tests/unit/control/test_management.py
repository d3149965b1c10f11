"""Model management from the driver, against a fake controller and fake routers: where a model
is placed (its holders, then its rendezvous order), what is refused, configure and release."""

from __future__ import annotations

from typing import Any

import pytest

from modelplex._control.management import ModelManager
from modelplex._data.routing import rendezvous_order
from modelplex._errors import ApplicationNotFoundError, BadRequestError, DeploymentNotFoundError
from modelplex._messages import DeploymentID
from modelplex._types import AdminOp, CacheLimits, ModelStatus

INGRESS = DeploymentID("app", "Ingress")
MODELS = DeploymentID("app", "Models")
REPLICAS = ["r0", "r1", "r2", "r3"]


class FakeRouter:
    def __init__(self, deployment_id: DeploymentID, loaded: dict[str, list[str]]) -> None:
        self.deployment_id = deployment_id
        self.loaded = loaded  # replica -> models it holds
        self.pinned: dict[str, set[str]] = {r: set() for r in REPLICAS}
        self.calls: list[tuple] = []

    async def wait_ready(self, timeout_s: float = 30.0) -> list[str]:
        return list(REPLICAS)

    def replica_models(self) -> dict[str, dict[str, Any]]:
        return {r: {"loaded": sorted(self.loaded.get(r, ())), "loading": []} for r in REPLICAS}

    async def call_replica(self, replica_id: str, method: str, *args: Any) -> Any:
        self.calls.append((replica_id, method, *args))
        if method == AdminOp.LIST.value:
            return [
                ModelStatus(replica_id, m, "loaded", pinned=m in self.pinned[replica_id])
                for m in self.loaded.get(replica_id, ())
            ]
        if method == AdminOp.UNLOAD.value:
            return args[0] in self.loaded.get(replica_id, ())
        return True


class FakeRouters:
    def __init__(self, loaded: dict[str, list[str]] | None = None) -> None:
        self.routers = {d: FakeRouter(d, loaded or {}) for d in (INGRESS, MODELS)}

    def router(self, deployment_id: DeploymentID) -> FakeRouter:
        return self.routers[deployment_id]


class FakeController:
    def __init__(self) -> None:
        self.limits: dict[DeploymentID, tuple] = {}
        self.weights: dict[DeploymentID, dict] = {}

    def app_names(self) -> list[str]:
        return ["app"]

    def deployments(self, app_name: str) -> tuple[DeploymentID, list[DeploymentID]]:
        return INGRESS, [INGRESS, MODELS]

    def set_cache_limits(self, deployment_id: DeploymentID, limits: tuple) -> None:
        self.limits[deployment_id] = limits

    async def set_model_weights(self, deployment_id: DeploymentID, weights: dict) -> None:
        self.weights[deployment_id] = weights


def manager(loaded: dict[str, list[str]] | None = None):
    controller, routers = FakeController(), FakeRouters(loaded)
    return ModelManager(controller, routers, local_node=False), controller, routers


async def test_placement_takes_holders_first_then_the_rendezvous_order():
    models, _, routers = manager({"r3": ["m"], "r1": ["m", "x"]})
    chosen = await models.place(AdminOp.PRELOAD, "m", "app", None, 3)
    rest = [r for r in rendezvous_order("m", REPLICAS) if r not in ("r1", "r3")]
    assert chosen == ["r1", "r3", rest[0]]
    assert sorted(routers.routers[INGRESS].calls) == sorted(
        (r, AdminOp.PRELOAD.value, "m") for r in chosen
    )


async def test_a_cold_model_goes_where_a_router_would_place_it():
    models, _, routers = manager()
    assert await models.place(AdminOp.PIN, "cold", "app", "Models", 2) == (
        rendezvous_order("cold", REPLICAS)[:2]
    )
    assert {c[1] for c in routers.routers[MODELS].calls} == {AdminOp.PIN.value}
    assert await models.place(AdminOp.WARM, "cold", "app", None, 9) == (
        rendezvous_order("cold", REPLICAS)  # no more than there are
    )


async def test_bad_arguments_are_refused_before_any_replica_is_called():
    models, _, routers = manager()
    for replicas in (0, -1, True, 1.5, "2"):
        with pytest.raises(BadRequestError, match="replicas must be an int >= 1"):
            await models.place(AdminOp.PRELOAD, "m", "app", None, replicas)
    with pytest.raises(ApplicationNotFoundError):
        await models.place(AdminOp.PRELOAD, "m", "nope", None, 1)
    with pytest.raises(DeploymentNotFoundError):
        await models.release(AdminOp.UNLOAD, "m", "app", "Nope")
    with pytest.raises(ValueError, match="place"):
        await models.place(AdminOp.UNLOAD, "m", "app", None, 1)
    with pytest.raises(ValueError, match="release"):
        await models.release(AdminOp.PIN, "m", "app", None)
    assert all(not r.calls for r in routers.routers.values())


async def test_release_returns_the_replicas_that_had_it():
    models, _, routers = manager({"r0": ["m"], "r2": ["m", "n"]})
    router = routers.routers[INGRESS]
    router.pinned["r2"].add("m")
    assert await models.release(AdminOp.UNPIN, "m", "app", None) == ["r2"]  # pinned there alone
    assert {c for c in router.calls if c[1] == AdminOp.UNPIN.value} == {
        (r, AdminOp.UNPIN.value, "m") for r in REPLICAS
    }
    assert await models.release(AdminOp.UNLOAD, "m", "app", None) == ["r0", "r2"]


async def test_configure_remembers_the_limits_and_resizes_every_replica():
    models, controller, routers = manager()
    await models.configure("app", "Models", 3, None)
    assert controller.limits == {MODELS: CacheLimits(3, None)}
    assert routers.routers[MODELS].calls == [(r, AdminOp.CONFIGURE.value, 3, None) for r in REPLICAS]
    with pytest.raises(ValueError, match="max_num_models_per_replica"):
        await models.configure("app", None, 0, None)
    assert INGRESS not in controller.limits


async def test_weights_are_checked_then_handed_to_the_controller():
    models, controller, _ = manager()
    assert await models.set_weights("app", "Models", {"gold": 4}) == {"gold": 4.0}
    assert controller.weights == {MODELS: {"gold": 4.0}}
    for bad, message in (({"x": 0}, "finite number > 0"), ([1], "must be a dict"),
                         ({"": 1}, "not a model id")):
        with pytest.raises(BadRequestError, match=message):
            await models.set_weights("app", None, bad)
    assert INGRESS not in controller.weights


async def test_list_models_covers_every_deployment_without_an_app():
    models, _, _ = manager({"r1": ["b", "a"]})
    listed = await models.list_models(None, None)
    assert [(s.replica_id, s.model_id) for s in listed] == [("r1", "a"), ("r1", "a"), ("r1", "b"), ("r1", "b")]
    listed = await models.list_models("app", None)  # an application: its ingress
    assert [(s.replica_id, s.model_id) for s in listed] == [("r1", "a"), ("r1", "b")]
