"""The holdings fold: what a replica's caches hold, as one ``ModelsUpdate``, and which models
requests want. Real caches with instant loaders, the clock injected; no replica process."""

from __future__ import annotations

import asyncio

import pytest

from modelplex._messages import ModelsUpdate
from modelplex._replica.cache import ModelCache
from modelplex._replica.holdings import AWAITED_S, Holdings

from tests.fakes import FakeClock


class Loader:
    """Loads at once, unless the test holds a model at its gate; a load takes 0.5 s of the
    cache's clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.gates: dict[str, asyncio.Event] = {}

    async def __call__(self, model_id: str) -> str:
        gate = self.gates.get(model_id)
        if gate is not None:
            await gate.wait()
        self.clock.now += 0.5
        return f"model {model_id}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(100.0)


def cache(clock: FakeClock, **limits) -> tuple[ModelCache, Loader]:
    loader = Loader(clock)
    return ModelCache(loader, clock=clock, **limits), loader


async def load(cache: ModelCache, *model_ids: str) -> None:
    for model_id in model_ids:
        await cache.get(model_id)


async def test_two_caches_fold_into_one_update_numbered_after_the_last(clock):
    first, _ = cache(clock, max_models=2)
    second, _ = cache(clock, max_models=3)
    holdings = Holdings("r1", [first, second], clock=clock)
    assert holdings.update() == ModelsUpdate("r1", 1, {}, (), True, 5)
    await load(first, "a")
    await load(second, "b", "c")
    update = holdings.update()
    assert update == ModelsUpdate("r1", 2, {"a": 0.5, "b": 0.5, "c": 0.5}, (), True, 5)
    await load(first, "d")  # the first cache is full: a new model there evicts
    update = holdings.update()
    assert (update.version, update.has_room, set(update.loaded)) == (3, False, set("abcd"))


async def test_an_unbounded_cache_makes_the_slots_unbounded(clock):
    bounded, _ = cache(clock, max_models=2)
    unbounded, _ = cache(clock, max_models=-1)
    holdings = Holdings("r1", [bounded, unbounded], clock=clock)
    await load(unbounded, *"abcdef")
    update = holdings.update()
    assert (update.slots, update.has_room, len(update.loaded)) == (-1, True, 6)


async def test_a_load_under_way_is_loading_and_takes_room(clock):
    one, loader = cache(clock, max_models=1)
    holdings = Holdings("r1", [one], clock=clock)
    gate = loader.gates["x"] = asyncio.Event()
    task = asyncio.ensure_future(one.get("x"))
    await asyncio.sleep(0)
    assert holdings.update() == ModelsUpdate("r1", 1, {}, ("x",), False, 1)
    gate.set()
    await task
    assert holdings.update() == ModelsUpdate("r1", 2, {"x": 0.5}, (), False, 1)


async def test_caches_added_later_are_folded_in(clock):
    caches: list[ModelCache] = []
    holdings = Holdings("r1", caches, clock=clock)
    assert holdings.update().slots == 0
    late, _ = cache(clock, max_models=4)
    caches.append(late)  # a loader's first use makes its cache
    await load(late, "a")
    assert holdings.update().loaded == {"a": 0.5}


def test_requests_keep_their_model_wanted_until_the_last_finishes(clock):
    holdings = Holdings("r1", [], clock=clock)
    holdings.arrived("a")
    holdings.arrived("a")
    holdings.arrived("b")
    assert holdings.wanted() == {"a", "b"}
    holdings.finished("a")
    holdings.finished("b")
    assert holdings.wanted() == {"a"}
    holdings.finished("a")
    assert holdings.wanted() == frozenset()
    holdings.finished("a")  # one too many is harmless
    assert holdings.wanted() == frozenset()


async def test_a_touch_makes_its_model_recent_and_wanted_until_it_expires(clock):
    first, _ = cache(clock, max_models=3)
    second, _ = cache(clock, max_models=3)
    await load(first, "a", "b")
    await load(second, "a", "c")
    holdings = Holdings("r1", [first, second], clock=clock)
    holdings.touch("a")
    assert first.loaded_ids() == ("b", "a") and second.loaded_ids() == ("c", "a")
    holdings.touch("z")  # held nowhere: wanted all the same (a request waits for it)
    assert holdings.wanted() == {"a", "z"}
    clock.now += AWAITED_S / 2
    holdings.touch("z")  # routers repeat it while requests still wait
    clock.now += AWAITED_S * 0.75
    assert holdings.wanted() == {"z"}  # a's touch ran out; z's was renewed
    clock.now += AWAITED_S
    assert holdings.wanted() == frozenset()


async def test_a_cache_passes_over_the_models_its_replica_wants(clock):
    holdings = Holdings("r1", [], clock=clock)
    one = ModelCache(Loader(clock), max_models=2, clock=clock, wanted=holdings.wanted)
    await load(one, "a", "b")  # a is the least recently used
    holdings.arrived("a")  # a request for a reached the replica, not yet its get_model
    await load(one, "c")
    assert one.loaded_ids() == ("a", "c")  # b went instead
    holdings.finished("a")
    await load(one, "d")
    assert one.loaded_ids() == ("c", "d")  # plain LRU again
