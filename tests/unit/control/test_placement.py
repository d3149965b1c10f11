"""The controller places replicas on the node's inventory (in-process backend, fake clock):
each replica's devices and threads, pending replicas that start when room frees, a rollout
that waits for its old replica, and what can never fit failing the deploy at once."""

from __future__ import annotations

import logging

import cloudpickle
import pytest

from modelplex._config import DeploymentConfig
from modelplex._control.backends.local import replica_environ
from modelplex._control.resources import Inventory
from modelplex._errors import InsufficientResourcesError
from modelplex._messages import DeploymentID
from modelplex._specs import DeploymentSpec, Placement

from .test_controller import World

NODE = Inventory(cpus=4, gpu_ids=("0", "1"), resources={"accel": 2})


def spec(name: str = "d", num_replicas: int = 1, version: str = "v1", **options) -> DeploymentSpec:
    config = DeploymentConfig(name=name, num_replicas=num_replicas, ray_actor_options=options or None)
    return DeploymentSpec(config, cloudpickle.dumps(version))


@pytest.fixture
async def world():
    made = []

    async def make(**kwargs) -> World:
        w = await World(inventory=NODE, **kwargs).start()
        made.append(w)
        return w

    yield make
    for w in made:
        await w.close()


def placements(w: World) -> list[Placement]:
    return [r.spec.placement for r in w.backend.live()]


def states(w: World, app: str = "app", name: str = "d"):
    seen = w.controller.observe(DeploymentID(app, name))
    return [(r.phase, r.waiting_for) for r in seen.replicas] if seen else []


async def test_each_replica_gets_its_own_devices_and_threads(world):
    w = await world()
    await w.deploy(spec(num_replicas=2, num_gpus=1, num_cpus=2))
    got = sorted(placements(w), key=lambda p: p.gpu_ids)
    assert [p.gpu_ids for p in got] == [("0",), ("1",)]
    assert [p.threads for p in got] == [2, 2]
    assert got[0].assigned == {"CPU": 2.0, "GPU": 1.0}
    assert w.controller.resources()["available"] == {"CPU": 0.0, "GPU": 0.0, "accel": 2.0}


async def test_half_gpus_pack_two_replicas_on_one_device(world):
    w = await world()
    await w.deploy(spec(num_replicas=4, num_gpus=0.5))
    assert sorted(p.gpu_ids for p in placements(w)) == [("0",), ("0",), ("1",), ("1",)]


async def test_a_replica_naming_no_cpus_reserves_none(world):
    w = await world()
    await w.deploy(spec(num_replicas=6))  # 6 replicas on 4 CPUs, as before placement
    assert [p.threads for p in placements(w)] == [1] * 6
    assert w.controller.resources()["available"]["CPU"] == 4.0


async def test_what_can_never_fit_fails_the_deploy_at_once_and_changes_nothing(world):
    w = await world()
    with pytest.raises(InsufficientResourcesError, match=r"asks for 3 GPU, and the node has 2") as info:
        await w.deploy(spec(num_gpus=3))
    assert (info.value.resource, info.value.requested, info.value.total) == ("GPU", 3.0, 2.0)
    with pytest.raises(InsufficientResourcesError, match=r"1 tpu, and the node has 0"):
        await w.deploy(spec(resources={"tpu": 1}))
    with pytest.raises(InsufficientResourcesError, match="replica 3 of 3 would wait forever for 1 GPU: 0 of 2 free"):
        await w.deploy(spec(num_replicas=3, num_gpus=1))
    assert w.backend.replicas == [] and w.controller.app_names() == []


async def test_runtime_env_takes_env_vars_and_refuses_the_rest(world):
    w = await world()
    with pytest.raises(ValueError, match=r"'pip', which the local backend does not apply"):
        await w.deploy(spec(runtime_env={"pip": ["torch"], "env_vars": {"A": "1"}}))
    await w.deploy(spec(runtime_env={"env_vars": {"A": "1"}}))
    assert placements(w)[0].env_vars == {"A": "1"}


async def test_a_replica_that_fits_later_waits_as_pending_and_starts_when_room_frees(world, caplog):
    w = await world()
    await w.drive(w.controller.deploy("a", "/a", [spec("d", resources={"accel": 2})], "d"))
    with caplog.at_level(logging.WARNING, logger="modelplex.controller"):
        # Only a's replica would make room: the deploy returns (holding the deploy lock
        # until then would block the delete that frees it), and the replica waits.
        await w.drive(w.controller.deploy("b", "/b", [spec("e", resources={"accel": 1})], "e"))
        assert states(w, "b", "e") == [("pending", "1 accel: 0 of 2 free")]
        await w.clock.advance(3.0)  # the loop looks again every second: it says so once
    warned = [r.getMessage() for r in caplog.records if "is pending" in r.getMessage()]
    assert len(warned) == 1 and "1 accel: 0 of 2 free" in warned[0]
    assert len(w.backend.live()) == 1

    await w.drive(w.controller.delete("a"))  # its replica stops: its accel is free again
    await w.until(lambda: states(w, "b", "e") == [("running", "")])


async def test_a_rollout_surge_that_does_not_fit_waits_for_the_old_replica(world):
    w = await world()
    await w.deploy(spec(num_gpus=2, version="v1"))
    first = w.backend.live()[0]
    await w.deploy(spec(num_gpus=2, version="v2"))  # the surge would need 4 GPUs: it waits
    (second,) = w.backend.live()
    assert second is not first and not first.alive
    assert second.spec.placement.gpu_ids == ("0", "1") and w.max_live == 1


async def test_a_rollout_of_many_replaces_them_one_at_a_time(world):
    w = await world()
    await w.deploy(spec(num_replicas=2, num_gpus=1, version="v1"))
    await w.deploy(spec(num_replicas=2, num_gpus=1, version="v2"))
    assert w.max_live == 2  # never more than the node holds
    assert w.published() == 2
    assert sorted(p.gpu_ids for p in placements(w)) == [("0",), ("1",)]


async def test_a_scale_down_drops_pending_replicas_first(world):
    w = await world()
    await w.drive(w.controller.deploy("a", "/a", [spec("d", num_gpus=1)], "d"))
    await w.drive(w.controller.deploy("b", "/b", [spec("e", num_replicas=2, num_gpus=1)], "e"))
    assert sorted(p for p, _ in states(w, "b", "e")) == ["pending", "running"]
    await w.drive(w.controller.deploy("b", "/b", [spec("e", num_replicas=1, num_gpus=1)], "e",
                                      in_place=True))
    assert states(w, "b", "e") == [("running", "")]  # the pending one went, not the running one
    assert len(w.backend.live()) == 2


async def test_an_autoscaler_scale_up_beyond_the_node_leaves_the_rest_pending(world):
    from modelplex._messages import RouterReport

    w = await world()
    scaling = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 1,
               "upscale_delay_s": 0, "downscale_delay_s": 0, "look_back_period_s": 0.5}
    config = DeploymentConfig(name="d", autoscaling_config=scaling, ray_actor_options={"num_gpus": 1})
    await w.deploy(DeploymentSpec(config, cloudpickle.dumps("v1")))

    def load(ongoing: int) -> None:
        w.controller.report(RouterReport("r", DeploymentID("app", "d"), ongoing, 0, 0, 0, (), (), 1))

    async def until_states(wanted: list[str]) -> None:
        async def look() -> bool:
            load(ongoing)
            return sorted(p for p, _ in states(w)) == wanted

        for _ in range(500):
            if await look():
                return
            await w.clock.advance(0.01)
        raise AssertionError(f"not {wanted}: {states(w)}")

    ongoing = 8  # wants 4 replicas; the node holds 2: the others wait, nothing fails
    await until_states(["pending", "pending", "running", "running"])
    assert {r for _, r in states(w)} == {"", "1 GPU: 0 of 2 free"}
    ongoing = 2  # wants fewer (3, with the policy's headroom): a pending one goes first
    await until_states(["pending", "running", "running"])
    assert len(w.backend.live()) == 2 and len(w.backend.replicas) == 2  # none stopped


def test_the_environment_a_local_replica_starts_with():
    placement = Placement(("2", "3"), {"GPU": 2.0}, 4, {"OMP_NUM_THREADS": "8", "X": "y"})
    env = replica_environ({"MKL_NUM_THREADS": "6", "PATH": "/bin"}, placement)
    assert env == {
        "PATH": "/bin", "CUDA_VISIBLE_DEVICES": "2,3",
        "OMP_NUM_THREADS": "8",  # runtime_env wins
        "MKL_NUM_THREADS": "6",  # the user's own setting stays
        "OPENBLAS_NUM_THREADS": "4",
        "X": "y",
    }
    assert replica_environ({}, Placement())["CUDA_VISIBLE_DEVICES"] == ""  # no devices: none
    assert replica_environ({"A": "b"}, None) == {"A": "b"}  # the backend placed it (Ray)
