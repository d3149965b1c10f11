"""The controller's loop on the in-process backend: replicas are objects on the test's loop,
and the test makes them slow, failing or crashing. No processes, no sockets, and no real time:
the controller and the replicas sleep on the one ``FakeClock``, which the test moves."""

from __future__ import annotations

import asyncio
import logging
import random

import cloudpickle
import pytest

from modelplex._control.backends.inprocess import InProcessBackend
from modelplex._config import DeploymentConfig
from modelplex._control.controller import Controller
from modelplex._specs import DeploymentSpec
from modelplex._errors import DeploymentFailedError
from modelplex._data.memory import MemoryNetwork
from modelplex._messages import DeploymentID
from modelplex._control.reconcile import Policy
from modelplex._storage.config import StorageConfig
from modelplex._types import CacheLimits

from ...fakes import FakeClock, settle

FAST = Policy(start_timeout_s=0.5, backoff_s=(0.01, 0.02, 0.04))
STEP_S = 0.01  # how far the clock moves between looks at a running controller


def spec(num_replicas: int = 1, version: str = "v1") -> DeploymentSpec:
    return DeploymentSpec(
        DeploymentConfig(name="d", num_replicas=num_replicas), cloudpickle.dumps(version)
    )


class World:
    def __init__(
        self, behaviour=lambda spec: (0.0, None), policy: Policy = FAST,
        storage: StorageConfig | None = None, inventory=None,
    ) -> None:
        self.clock = FakeClock()
        self.net = MemoryNetwork()
        self.backend = InProcessBackend(
            self.net, behaviour, sleep=self.clock.sleep, inventory=inventory
        )
        self.controller = Controller(
            self.backend, secret=b"s", log_dir="", policy=policy,
            clock=self.clock, sleep=self.clock.sleep, storage=storage,
        )
        self.max_live = 0
        self.backend.on_change = self._count

    def _count(self) -> None:
        self.max_live = max(self.max_live, len(self.backend.live()))

    async def start(self) -> "World":
        await self.controller.start("controller", listen=False)
        self.net.listen(self.controller.address, self.controller.accept)
        return self

    async def drive(self, awaitable, limit_s: float = 60.0):
        """Await ``awaitable`` while the clock moves; at most ``limit_s`` of fake time."""
        task = asyncio.ensure_future(awaitable)
        end = self.clock.now + limit_s
        while not task.done():
            if self.clock.now >= end:
                task.cancel()
                raise AssertionError(f"still waiting after {limit_s}s of fake time")
            await self.clock.advance(STEP_S)
        return task.result()

    async def deploy(self, *specs: DeploymentSpec) -> None:
        await self.drive(self.controller.deploy("app", "/", list(specs), "d"))

    def published(self) -> int:
        return len(self.controller.replica_set(DeploymentID("app", "d")).replicas)

    async def until(self, predicate, limit_s: float = 5.0) -> None:
        """Move the clock until ``predicate()`` holds, at most ``limit_s`` of fake time."""
        end = self.clock.now + limit_s
        while not predicate():
            if self.clock.now >= end:
                raise AssertionError(f"not so after {limit_s}s of fake time")
            await self.clock.advance(STEP_S)

    async def close(self) -> None:
        await self.drive(self.controller.shutdown())
        await self.net.close()


@pytest.fixture
async def world():
    made = []

    async def make(**kwargs) -> World:
        w = await World(**kwargs).start()
        made.append(w)
        return w

    yield make
    for w in made:
        await w.close()


async def test_deploy_starts_the_target_and_publishes_it(world):
    w = await world()
    await w.deploy(spec(3))
    assert w.published() == 3 and len(w.backend.live()) == 3


async def test_a_crashed_replica_is_replaced_once(world):
    w = await world()
    await w.deploy(spec(2))
    w.backend.live()[0].crash()
    await w.until(lambda: w.published() == 2 and len(w.backend.replicas) == 3)
    assert w.max_live == 2


async def test_a_replacement_that_fails_to_start_is_retried_without_a_runaway(world):
    """The old controller's bug: a replica killed while its replacement crashes once left two
    replicas for num_replicas=1."""
    starts = []

    def behaviour(spec):
        starts.append(spec.replica_id)
        return 0.0, ("boom" if len(starts) == 2 else None)

    w = await world(behaviour=behaviour)
    await w.deploy(spec(1))
    w.backend.live()[0].crash()
    await w.until(lambda: w.published() == 1 and len(starts) == 3)
    await w.clock.advance(0.2)  # time for a runaway second replacement to show itself
    assert len(w.backend.live()) == 1 and len(starts) == 3 and w.max_live == 1


async def test_a_constructor_that_keeps_failing_fails_the_deploy_after_three_attempts(world):
    attempts = []

    def behaviour(spec):
        attempts.append(1)
        return 0.0, "ValueError: bad constructor argument"

    w = await world(behaviour=behaviour)
    with pytest.raises(DeploymentFailedError, match="bad constructor argument"):
        await w.deploy(spec(1))
    assert len(attempts) == 3
    await w.until(lambda: not w.backend.live())
    assert w.controller.replica_set(DeploymentID("app", "d")).exists is False


async def test_a_replica_that_never_starts_is_timed_out_and_replaced(world):
    slow = [True]

    def behaviour(spec):
        return (3600.0 if slow.pop() else 0.0) if slow else 0.0, None

    w = await world(behaviour=behaviour)
    await w.deploy(spec(1))
    assert len(w.backend.replicas) == 2 and w.published() == 1
    assert not w.backend.replicas[0].alive  # the stuck one was stopped


async def test_a_rollout_starts_new_replicas_before_it_stops_old_ones(world):
    w = await world()
    await w.deploy(spec(2, "v1"))
    first = set(r.replica_id for r in w.backend.live())
    await w.deploy(spec(2, "v2"))
    now = set(r.replica_id for r in w.backend.live())
    assert len(now) == 2 and not now & first
    assert w.max_live <= 4 and w.published() == 2


async def test_a_failed_rollout_keeps_the_old_version_serving(world):
    fail_v2 = []

    def behaviour(spec):
        bad = cloudpickle.loads(spec.payload) == "v2"
        fail_v2.append(bad)
        return 0.0, ("RuntimeError: v2 is broken" if bad else None)

    w = await world(behaviour=behaviour)
    await w.deploy(spec(2, "v1"))
    old = set(r.replica_id for r in w.backend.live())
    with pytest.raises(DeploymentFailedError, match="v2 is broken"):
        await w.deploy(spec(2, "v2"))
    await w.until(lambda: len(w.backend.live()) == 2)
    assert set(r.replica_id for r in w.backend.live()) == old and w.published() == 2


@pytest.mark.parametrize("seed", range(5))
async def test_random_faults_never_exceed_the_target_and_converge(world, seed):
    rng = random.Random(seed)

    def behaviour(spec):
        return rng.choice([0.0, 0.0, 0.01, 0.05]), ("flaky" if rng.random() < 0.3 else None)

    w = await world(behaviour=behaviour, policy=Policy(start_timeout_s=0.04, backoff_s=(0.005,)))
    target = 3
    await w.deploy(spec(target))
    w.max_live = len(w.backend.live())
    for _ in range(30):
        live = [r for r in w.backend.live() if r.ready]
        if live and rng.random() < 0.6:
            rng.choice(live).crash()
        pause = rng.choice([0.0, 0.001, 0.01])
        await (w.clock.advance(pause) if pause else settle(1))
    await w.until(lambda: w.published() == target and len(w.backend.live()) == target)
    assert w.max_live <= target


def configured(user_config, **options) -> DeploymentSpec:
    config = DeploymentConfig(name="d", num_replicas=2, user_config=user_config, **options)
    return DeploymentSpec(config, cloudpickle.dumps("v1"))


async def test_a_new_user_config_alone_reconfigures_the_replicas_in_place(world):
    w = await world()
    await w.deploy(configured({"threshold": 1}))
    first = w.backend.live()
    assert [r.spec.user_config for r in first] == [{"threshold": 1}] * 2
    await w.deploy(configured({"threshold": 2}))  # serve.run: no new code version
    assert w.backend.live() == first  # the same replicas, models and all
    assert [r.user_config for r in first] == [{"threshold": 2}] * 2
    w.backend.live()[0].crash()  # a replacement starts with the current user_config
    await w.until(lambda: len(w.backend.live()) == 2 and all(r.ready for r in w.backend.live()))
    assert [r.spec.user_config for r in w.backend.live() if r not in first] == [{"threshold": 2}]
    await w.deploy(configured({"threshold": 2}, max_ongoing_requests=9))  # anything else rolls out
    assert not set(w.backend.live()) & set(first)


async def test_a_reconfigure_that_raises_fails_the_deploy_and_keeps_the_old_config(world):
    w = await world()
    await w.deploy(configured({"threshold": 1}))
    first = w.backend.live()
    calls = []

    def reconfigure(replica, config):
        calls.append(config)
        if config == {"threshold": -1} and replica is first[1]:
            return "ValueError: threshold must be >= 0"
        return None

    w.backend.reconfigure = reconfigure
    with pytest.raises(DeploymentFailedError, match="failed to reconfigure.*threshold must be >= 0"):
        await w.deploy(configured({"threshold": -1}))
    assert w.backend.live() == first
    assert [r.user_config for r in first] == [{"threshold": 1}] * 2  # the one that took it, back
    assert calls.count({"threshold": 1}) == 1
    first[0].crash()  # the target kept the old user_config: a replacement starts with it
    await w.until(lambda: len(w.backend.live()) == 2 and all(r.ready for r in w.backend.live()))
    assert all(r.spec.user_config == {"threshold": 1} for r in w.backend.live())


async def test_a_replica_whose_check_health_keeps_failing_is_replaced(world):
    w = await world()
    config = DeploymentConfig(name="d", health_check_period_s=0.01, health_check_timeout_s=1.0)
    await w.deploy(DeploymentSpec(config, cloudpickle.dumps("v1")))
    (sick,) = w.backend.live()
    sick.unhealthy = "RuntimeError: lost the GPU"
    await w.until(lambda: not sick.alive and len(w.backend.live()) == 1 and w.published() == 1)
    assert await sick.wait() == 0  # stopped (its requests finish), not killed (-9)
    assert w.max_live <= 2


async def test_a_config_file_deploy_scales_and_reconfigures_in_place(world):
    w = await world()
    await w.deploy(configured({"threshold": 1}))
    first = w.backend.live()
    three = DeploymentSpec(
        DeploymentConfig(name="d", num_replicas=3, user_config={"threshold": 2}), cloudpickle.dumps("v1")
    )
    await w.drive(w.controller.deploy("app", "/", [three], "d", in_place=True))
    assert set(first) < set(w.backend.live()) and len(w.backend.live()) == 3
    assert all(r.user_config == {"threshold": 2} for r in w.backend.live())


async def test_a_replica_that_stops_answering_pings_is_killed_and_replaced(world):
    w = await world()
    config = DeploymentConfig(name="d", health_check_period_s=10.0, health_check_timeout_s=30.0)
    await w.deploy(DeploymentSpec(config, cloudpickle.dumps("v1")))
    (hung,) = w.backend.live()
    hung.wedged = True
    await w.clock.advance(10.0 + 30.0, step=1.0)  # one period, then the whole timeout
    assert hung.alive  # the grace for its answer to arrive is not over yet
    await w.until(lambda: not hung.alive and len(w.backend.live()) == 1 and w.published() == 1)
    assert await hung.wait() == -9 and w.max_live <= 2


async def test_a_replica_that_waits_to_start_is_reported_every_30s(world, caplog):
    w = await world(behaviour=lambda spec: (3600.0, None), policy=Policy(start_timeout_s=3600.0))
    deploying = asyncio.ensure_future(w.controller.deploy("app", "/", [spec(1)], "d"))
    with caplog.at_level(logging.WARNING, "modelplex.controller"):
        await w.clock.advance(29.0, step=1.0)
        assert "has not started" not in caplog.text
        await w.clock.advance(2.0, step=1.0)
        assert "has not started after 30s" in caplog.text
    deploying.cancel()
    await asyncio.gather(deploying, return_exceptions=True)


async def test_a_replacement_starts_with_the_cache_limits_set_at_run_time(world):
    w = await world()
    await w.deploy(spec(1))
    (first,) = w.backend.live()
    assert first.spec.cache_limits is None
    limits = CacheLimits(2, 10_000)
    w.controller.set_cache_limits(DeploymentID("app", "d"), limits)
    first.crash()
    await w.until(lambda: len(w.backend.live()) == 1 and w.backend.live()[0] is not first)
    assert w.backend.live()[0].spec.cache_limits == limits
    await w.deploy(spec(1, "v2"))  # a redeploy starts from the code's limits again
    assert w.backend.live()[0].spec.cache_limits is None


async def test_replicas_get_the_storage_config_the_driver_read(world, tmp_path):
    storage = StorageConfig(cache_dir=str(tmp_path), max_bytes=1 << 20)
    w = await world(storage=storage)
    await w.deploy(spec(2))
    assert [r.spec.storage for r in w.backend.live()] == [storage, storage]


async def test_tenant_options_change_in_place_and_reach_the_routers(world):
    w = await world()
    await w.deploy(spec(2))
    replicas = set(w.backend.live())
    deployment_id = DeploymentID("app", "d")
    before = w.controller.replica_set(deployment_id)
    assert before.tenants.fair and before.tenants.weights == {}
    await w.drive(w.controller.set_model_weights(deployment_id, {"gold": 4.0}))
    after = w.controller.replica_set(deployment_id)
    assert after.version > before.version and after.tenants.weight("gold") == 4.0
    tenants = DeploymentSpec(
        DeploymentConfig(name="d", num_replicas=2, fairness="fifo", max_queued_requests_per_model=5),
        cloudpickle.dumps("v1"),
    )
    await w.drive(w.controller.deploy("app", "/", [tenants], "d", in_place=True))  # a config deploy
    last = w.controller.replica_set(deployment_id)
    assert (last.tenants.fairness, last.tenants.max_queued_per_model) == ("fifo", 5)
    assert last.tenants.weights == {}  # the deploy says what the weights are again
    assert set(w.backend.live()) == replicas  # the same replicas throughout
