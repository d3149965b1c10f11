"""Tenants at the router: fair draining, per-model limits, a cap across routers, weights in
place. Scripted replicas over the in-memory transport, a fake clock: milliseconds each."""

from __future__ import annotations

import asyncio

import pytest

from modelplex._config import TenantPolicy
from modelplex._data.memory import MemoryNetwork
from modelplex._errors import BackPressureError, error_response

from tests.fakes import Directory, FakeClock, FakeReplica, make_router, settle


@pytest.fixture
async def world():
    net, directory, clock = MemoryNetwork(), Directory(), FakeClock()
    routers = []

    async def router(*replicas, publish: bool = True, max_queued: int = -1,
                     loads_models: bool = False, **tenants):
        made = await make_router(net, directory, clock)
        routers.append(made)
        if publish:
            await directory.publish(replicas, max_queued=max_queued, loads_models=loads_models,
                                    tenants=TenantPolicy(**tenants) if tenants else None)
            await made.wait_ready(timeout_s=1)
        return made

    yield net, directory, clock, router
    for made in routers:
        await made.close()
    await net.close()


def start(router, model_id: str) -> asyncio.Task:
    return asyncio.ensure_future(router.call("__call__", model_id=model_id))


async def reply_one(replica: FakeReplica) -> None:
    """Answer the oldest call the replica holds."""
    channel, call = replica.pending.pop(0)
    replica._answer(channel, call)
    await settle()


async def test_a_quiet_model_takes_the_next_free_slot_ahead_of_a_flood(world):
    net, _, _, make = world
    a = FakeReplica(net, "a", max_ongoing=2, loaded={"noisy": 0.1, "quiet": 0.1})
    router = await make(a)
    flood = [start(router, "noisy") for _ in range(20)]
    await settle()
    quiet = start(router, "quiet")
    await settle()
    assert [c.model_id for c in a.calls] == ["noisy", "noisy"]
    await reply_one(a)
    assert a.calls[-1].model_id == "quiet"  # 18 noisy requests were ahead of it in arrival
    await reply_one(a)
    await reply_one(a)
    assert await quiet == "a"
    while a.pending:
        await reply_one(a)
    assert await asyncio.gather(*flood) == ["a"] * 20


async def test_fifo_keeps_arrival_order(world):
    net, _, _, make = world
    a = FakeReplica(net, "a", max_ongoing=2, loaded={"noisy": 0.1, "quiet": 0.1})
    router = await make(a, fairness="fifo")
    flood = [start(router, "noisy") for _ in range(6)]
    await settle()
    quiet = start(router, "quiet")
    await settle()
    for _ in range(4):
        await reply_one(a)
    assert [c.model_id for c in a.calls] == ["noisy"] * 6  # the flood first, as it came
    while a.pending:
        await reply_one(a)
    await asyncio.gather(quiet, *flood)
    assert a.calls[-1].model_id == "quiet"


async def test_a_model_past_its_backlog_is_refused_with_429_naming_it(world):
    net, _, _, make = world
    a = FakeReplica(net, "a", max_ongoing=1, loaded={"noisy": 0.1})
    router = await make(a, max_queued_per_model=2)
    calls = [start(router, "noisy") for _ in range(3)]  # 1 runs, 2 wait
    await settle()
    with pytest.raises(BackPressureError) as info:
        await router.call("__call__", model_id="noisy")
    error = info.value
    assert (error.model_id, error.queued, error.limit) == ("noisy", 2, 2)
    status, headers, body = error_response(error)
    assert status == 429 and b"Model 'noisy'" in body
    assert dict(headers)[b"retry-after"].isdigit()
    other = start(router, "other")  # another id's backlog is its own
    await settle()
    assert not other.done()
    while a.pending:
        await reply_one(a)
    assert await asyncio.gather(*calls, other) == ["a"] * 4


async def test_a_full_deployment_queue_refuses_the_longest_backlog_not_the_newcomer(world):
    net, _, _, make = world
    a = FakeReplica(net, "a", max_ongoing=1, loaded={"noisy": 0.1, "quiet": 0.1})
    router = await make(a, max_queued=3)
    calls = [start(router, "noisy") for _ in range(4)]  # 1 runs, 3 wait: full
    await settle()
    quiet = start(router, "quiet")
    await settle()
    assert not quiet.done()
    shed = calls[-1]  # the newest noisy request made room
    assert shed.done() and isinstance(shed.exception(), BackPressureError)
    assert shed.exception().model_id == "" and error_response(shed.exception()).status == 503
    with pytest.raises(BackPressureError):  # noisy again: its own backlog is the longest
        await router.call("__call__", model_id="noisy")
    while a.pending:
        await reply_one(a)
    await asyncio.gather(quiet, *calls[:-1])


async def test_max_ongoing_per_model_caps_one_id_and_leaves_the_slots_to_others(world):
    net, _, _, make = world
    a = FakeReplica(net, "a", max_ongoing=4, loaded={"noisy": 0.1, "quiet": 0.1})
    router = await make(a, max_ongoing_per_model=2)
    flood = [start(router, "noisy") for _ in range(5)]
    await settle()
    assert len(a.calls) == 2  # two free slots stay free for other ids
    quiet = start(router, "quiet")
    await settle()
    assert [c.model_id for c in a.calls] == ["noisy", "noisy", "quiet"]
    await reply_one(a)  # a noisy one ends: the next noisy one takes its place
    assert [c.model_id for _, c in a.pending] == ["noisy", "quiet", "noisy"]
    while a.pending:
        await reply_one(a)
    await asyncio.gather(quiet, *flood)


async def test_the_per_model_cap_holds_across_two_routers(world):
    net, directory, _, make = world
    a = FakeReplica(net, "a", max_ongoing=4, loaded={"m": 0.1})
    b = FakeReplica(net, "b", max_ongoing=4, loaded={"m": 0.1})
    first = await make(a, b, max_ongoing_per_model=3)
    second = await make(publish=False)
    await second.wait_ready(timeout_s=1)
    calls = [start(first, "m") for _ in range(3)]
    await settle()
    assert len(a.pending) + len(b.pending) == 3
    late = start(second, "m")  # the replicas told the second router what the first runs
    await settle()
    assert len(a.pending) + len(b.pending) == 3 and not late.done()
    await reply_one(a if a.pending else b)  # one of the first router's ends: room for one
    assert len(a.calls) + len(b.calls) == 4 and len(a.pending) + len(b.pending) == 3
    while a.pending or b.pending:
        for r in (a, b):
            if r.pending:
                await reply_one(r)
    await asyncio.gather(late, *calls)


async def test_weights_change_in_place_with_a_new_replica_set(world):
    net, directory, _, make = world
    a = FakeReplica(net, "a", max_ongoing=1, loaded={"x": 0.1, "y": 0.1})
    router = await make(a)
    blocker = start(router, "x")
    await settle()
    calls = [start(router, m) for m in ("x", "y") * 8]
    await settle()
    await directory.publish([a], tenants=TenantPolicy(weights={"y": 3}))
    for _ in range(8):
        await reply_one(a)
    served = [c.model_id for c in a.calls[1:]]
    assert served.count("y") == 6 and served.count("x") == 2
    while a.pending:
        await reply_one(a)
    await asyncio.gather(blocker, *calls)


async def test_the_first_burst_is_held_to_the_per_model_backlog(world):
    net, directory, _, make = world
    a = FakeReplica(net, "a", max_ongoing=2, loaded={"m": 0.1})
    router = await make(publish=False)
    calls = [start(router, "m") for _ in range(10)]
    await settle()
    await directory.publish([a], tenants=TenantPolicy(max_queued_per_model=3))
    await settle()
    refused = [c for c in calls if c.done() and isinstance(c.exception(), BackPressureError)]
    assert len(refused) == 5 and all(c.exception().model_id == "m" for c in refused)
    while a.pending:
        await reply_one(a)
    assert len(await asyncio.gather(*(c for c in calls if c not in refused))) == 5


async def test_reports_name_the_longest_queues(world):
    net, _, _, make = world
    a = FakeReplica(net, "a", max_ongoing=1, loaded={"x": 0.1, "y": 0.1})
    router = await make(a)
    calls = [start(router, "x")] + [start(router, "y") for _ in range(3)] + [start(router, "x")]
    await settle()
    assert router.report().queues == (("y", 3), ("x", 1))
    while a.pending:
        await reply_one(a)
    await asyncio.gather(*calls)


async def test_a_cold_load_leaves_the_replicas_slot_to_other_models(world):
    net, _, _, make = world
    a = FakeReplica(net, "a", max_ongoing=1, loaded={"hot": 0.1})
    router = await make(a, loads_models=True)
    cold = start(router, "cold")
    await settle()
    assert [c.model_id for c in a.calls] == ["cold"]  # in the load lane
    hot = start(router, "hot")
    await settle()
    assert [c.model_id for c in a.calls] == ["cold", "hot"]  # the slot was still free
    a.loaded["cold"] = 2.0
    a.push()  # loaded: the cold request counts from now on
    await settle()
    assert router._registry.get("a").ongoing == 2
    again = start(router, "hot")
    await settle()
    assert len(a.calls) == 2  # saturated (over by the one that loaded)
    while a.pending:
        await reply_one(a)
    assert await asyncio.gather(cold, hot, again) == ["a"] * 3
    assert router._registry.get("a").ongoing == 0 and router._registry.get("a").lane is None


async def test_requests_wait_for_a_load_the_replica_says_is_under_way(world):
    net, _, _, make = world
    a = FakeReplica(net, "a", max_ongoing=4)
    router = await make(a, loads_models=True)
    first = start(router, "m")
    await settle()
    a.loading = ("m",)
    a.push()
    await settle()
    rest = [start(router, "m") for _ in range(3)]
    await settle()
    assert len(a.calls) == 1  # they wait here, not in three of its slots
    other = start(router, "other")
    await settle()
    assert [c.model_id for c in a.calls] == ["m", "other"]
    a.loading, a.loaded["m"] = (), 1.0
    a.push()
    await settle()
    assert [c.model_id for c in a.calls].count("m") == 3  # the two slots left (of four)
    while a.pending:
        await reply_one(a)
    await asyncio.gather(first, other, *rest)
