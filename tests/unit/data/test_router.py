"""The router on its two seams: scripted replicas over the in-memory transport, a fake clock.

No processes, no sockets, no sleeping: each test runs in milliseconds.
"""

from __future__ import annotations

import asyncio
import pickle

import pytest

from modelplex._errors import BackPressureError, ReplicaDiedError
from modelplex._data.memory import MemoryNetwork
from modelplex._messages import Chunk, ModelsUpdate, ReplicaInfo, ReplicaSet, Result
from modelplex._data import demand as demand_module, placement as placement_module
from modelplex._data.registry import ReplicaRegistry, ReplicaView
from modelplex._data.routing import rendezvous_order

from tests.fakes import DEPLOYMENT, Directory, FakeClock, FakeReplica, make_router, settle


@pytest.fixture
async def world():
    net, directory, clock = MemoryNetwork(), Directory(), FakeClock()
    routers = []

    async def router(*replicas, max_queued: int = -1, publish: bool = True, **kwargs):
        made = await make_router(net, directory, clock, **kwargs)
        routers.append(made)
        if publish:
            await directory.publish(replicas, max_queued=max_queued)
            await made.wait_ready(timeout_s=1)
        return made

    yield net, directory, clock, router
    for made in routers:
        await made.close()
    await net.close()


def start(router, model_id: str = "", **kwargs) -> asyncio.Task:
    return asyncio.ensure_future(router.call("__call__", model_id=model_id, **kwargs))


# ---- connections -----------------------------------------------------------------------------


async def test_a_lost_connection_is_redialled_and_the_replica_serves_again(world):
    net, _, clock, make = world
    a = FakeReplica(net, "a", auto_reply=True)
    router = await make(a)
    assert await router.call("__call__") == "a"
    net.sever(a.address)  # a network blip: the replica itself is fine
    await settle()
    assert router.replica_models() == {}  # not routable while disconnected
    await clock.advance(0.2)
    assert net.dials[a.address] == 2
    assert await router.call("__call__") == "a"


async def test_requests_in_flight_on_a_lost_connection_fail_with_replica_died(world):
    net, _, _, make = world
    a = FakeReplica(net, "a")
    router = await make(a)
    call = start(router, "m")
    await settle()
    net.sever(a.address)
    with pytest.raises(ReplicaDiedError, match="connection lost"):
        await call


async def test_a_refusing_replica_is_redialled_with_backoff_until_the_controller_drops_it(world):
    net, directory, clock, make = world
    a, b = FakeReplica(net, "a", auto_reply=True), FakeReplica(net, "b", auto_reply=True)
    router = await make(a, b)
    net.refuse(a.address)
    net.sever(a.address)
    await clock.advance(1.0)
    early = net.dials[a.address]
    await clock.advance(4.0)
    later = net.dials[a.address] - early
    assert 2 <= early and later <= 4 + 1  # backoff: the delays grow to REDIAL_MAX_S (2 s)
    assert await router.call("__call__", model_id="m") == "b"  # the survivor serves meanwhile
    await directory.publish([b])
    dials = net.dials[a.address]
    await clock.advance(10.0)
    assert net.dials[a.address] == dials  # no longer listed: no longer dialled


async def test_a_call_that_could_not_be_written_goes_to_another_replica(world):
    net, _, _, make = world
    a, b = FakeReplica(net, "a", auto_reply=True), FakeReplica(net, "b", auto_reply=True)
    router = await make(a, b)
    home = rendezvous_order("m", ["a", "b"])[0]
    other = "b" if home == "a" else "a"
    view = router._registry.get(home)
    view.running.channel._closed = True  # gone, and the reader has not noticed yet
    assert await router.call("__call__", model_id="m") == other
    assert await router.call("__call__", model_id="m") == other


async def test_the_retries_are_bounded(world):
    net, _, _, make = world
    replicas = [FakeReplica(net, name) for name in "abc"]
    router = await make(*replicas)
    for view in router._registry:
        view.running.channel._closed = True
    with pytest.raises(ReplicaDiedError, match="connection lost"):
        await router.call("__call__", model_id="m")


async def test_a_dropped_replica_finishes_its_requests_before_the_router_hangs_up(world):
    net, directory, _, make = world
    a, b = FakeReplica(net, "a"), FakeReplica(net, "b", auto_reply=True)
    router = await make(a)
    call = start(router, "m")
    await settle()
    await directory.publish([b])  # a redeploy: a drains
    assert net.connections(a.address) == 1
    await a.reply_all()
    assert await call == "a"
    await settle()
    assert net.connections(a.address) == 0
    assert await router.call("__call__", model_id="m") == "b"


# ---- versioned updates -----------------------------------------------------------------------


def test_the_registry_ignores_a_replica_set_older_than_the_one_applied():
    registry = ReplicaRegistry()
    a, b = ReplicaInfo("a", ("x", 1), 5), ReplicaInfo("b", ("x", 2), 5)
    assert registry.apply_set(ReplicaSet(DEPLOYMENT, 2, (a, b))) is not None
    assert registry.apply_set(ReplicaSet(DEPLOYMENT, 1, (a,))) is None  # late and stale
    assert registry.apply_set(ReplicaSet(DEPLOYMENT, 2, (a,))) is None  # already applied
    assert sorted(v.replica_id for v in registry.listed()) == ["a", "b"]
    added, dropped = registry.apply_set(ReplicaSet(DEPLOYMENT, 3, (b,)))
    assert (added, [v.replica_id for v in dropped]) == ([], ["a"])


def test_the_registry_ignores_a_models_update_older_than_the_one_applied():
    view = ReplicaView(ReplicaInfo("a", ("x", 1), 5))
    assert ReplicaRegistry.apply_models(view, ModelsUpdate("a", 5, {"new": 0.1}, (), True))
    assert not ReplicaRegistry.apply_models(view, ModelsUpdate("a", 4, {"old": 0.1}, (), True))
    assert set(view.loaded) == {"new"}


async def test_a_late_models_update_does_not_overwrite_a_newer_one(world):
    net, _, _, make = world
    a = FakeReplica(net, "a")
    router = await make(a)
    a.loaded = {"new": 0.1}
    a.push(version=7)
    a.loaded = {"old": 0.1}
    a.push(version=6)  # sent later, computed earlier
    await settle()
    assert router.replica_models()["a"]["loaded"] == ["new"]


# ---- the queue -------------------------------------------------------------------------------


async def test_max_queued_refuses_at_once_beyond_the_bound(world):
    net, _, _, make = world
    a = FakeReplica(net, "a", max_ongoing=1)
    router = await make(a, max_queued=2)
    calls = [start(router, "m") for _ in range(3)]  # 1 runs, 2 wait
    await settle()
    with pytest.raises(BackPressureError) as info:
        await router.call("__call__", model_id="m")
    assert (info.value.queued, info.value.limit) == (2, 2)
    for _ in range(3):
        await a.reply_all()
    assert await asyncio.gather(*calls) == ["a"] * 3


async def test_the_queue_bound_holds_for_the_first_burst(world):
    """60 requests before the router knows its replicas: 2 may run and 10 wait; 48 refused."""
    net, directory, _, make = world
    a = FakeReplica(net, "a", max_ongoing=2)
    router = await make(publish=False)
    calls = [start(router, "m") for _ in range(60)]
    await settle()
    await directory.publish([a], max_queued=10)
    await settle()
    refused = [c for c in calls if c.done() and isinstance(c.exception(), BackPressureError)]
    assert len(refused) == 48
    assert len(a.pending) == 2 and router.sizes()["queued"] == 10
    while a.pending:
        await a.reply_all()
    served = [c for c in calls if c not in refused]
    assert await asyncio.gather(*served) == ["a"] * 12


async def test_requests_queued_before_the_replicas_are_known_go_to_their_homes(world):
    """Nothing is placed until every listed replica is connected and routable, whichever
    connects last: independent routers must agree on a cold model's home."""
    net, directory, _, make = world
    a, b = FakeReplica(net, "a", auto_reply=True), FakeReplica(net, "b", auto_reply=True)
    router = await make(publish=False)
    models = {rendezvous_order(m, ["a", "b"])[0]: m for m in (f"m{i}" for i in range(20))}
    calls = {home: [start(router, m) for _ in range(3)] for home, m in models.items()}
    await settle()
    await directory.publish([a, b])
    for home, waiting in calls.items():
        assert await asyncio.gather(*waiting) == [home] * 3


async def test_a_cancelled_waiting_request_leaves_the_queue(world):
    net, _, _, make = world
    a = FakeReplica(net, "a", max_ongoing=1)
    router = await make(a)
    first, second = start(router, "m"), start(router, "m")
    await settle()
    assert router.sizes()["queued"] == 1
    second.cancel()  # the client went away while queued
    await settle()
    assert router.sizes()["queued"] == 0
    await a.reply_all()
    assert await first == "a"
    assert len(a.calls) == 1  # the cancelled request never reached the replica


async def test_a_cancelled_request_in_flight_is_cancelled_in_the_replica(world):
    net, _, _, make = world
    a = FakeReplica(net, "a")
    router = await make(a)
    call = start(router, "m")
    await settle()
    call.cancel()
    await settle()
    assert a.cancels == [a.calls[0].request_id]
    assert router._registry.get("a").ongoing == 0  # the slot is free again


async def test_a_drain_costs_the_models_held_not_the_requests_queued(world, monkeypatch):
    """5,000 requests for 5,000 cold models wait behind a busy replica; a freed slot costs a
    few policy calls, however long the queue."""
    net, _, _, make = world
    a = FakeReplica(net, "a", max_ongoing=1)
    router = await make(a)
    blocker = start(router, "hot")
    await settle()
    calls = [start(router, f"m{i}") for i in range(5000)]
    await settle()
    assert router.sizes()["queued"] == 5000
    counted = []
    real = placement_module.choose_replica

    def counting(*args, **kwargs):
        counted.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(placement_module, "choose_replica", counting)
    router._placement.drain()  # nothing free: no policy call at all
    assert counted == []
    await a.reply_all()  # one slot frees: the oldest waiting request takes it
    assert await blocker == "a"
    assert len(counted) <= 3
    assert router.sizes()["queued"] == 4999
    for call in calls:
        call.cancel()
    await settle()


# ---- placement under contention --------------------------------------------------------------


async def test_a_hot_model_spills_once_waiting_has_cost_one_load(world):
    net, _, clock, make = world
    holder = FakeReplica(net, "h", max_ongoing=1, loaded={"m": 0.5})
    other = FakeReplica(net, "o", max_ongoing=1)
    router = await make(holder, other)
    first, second = start(router, "m"), start(router, "m")
    await settle()
    assert [c.model_id for c in holder.calls] == ["m"] and other.calls == []
    await clock.advance(0.3)
    assert other.calls == []  # renting: 0.3 s waited < one load (0.5 s)
    await clock.advance(0.3)
    assert [c.model_id for c in other.calls] == ["m"]  # bought: spilled to the other replica
    await holder.reply_all()
    await other.reply_all()
    assert sorted(await asyncio.gather(first, second)) == ["h", "o"]


async def test_a_cold_burst_loads_the_model_once(world):
    net, _, _, make = world
    a, b = FakeReplica(net, "a", max_ongoing=2), FakeReplica(net, "b", max_ongoing=2)
    router = await make(a, b)
    calls = [start(router, "cold") for _ in range(6)]
    await settle()
    home = rendezvous_order("cold", ["a", "b"])[0]
    holder, idle = (a, b) if home == "a" else (b, a)
    assert len(holder.calls) == 2 and idle.calls == []  # the rest wait for the one load
    while holder.pending:
        await holder.reply_all()
    assert await asyncio.gather(*calls) == [home] * 6


async def test_requests_waiting_on_a_busy_holder_remind_it_of_their_model(world):
    """The holder's LRU must see demand that is queued at the router, not only what runs."""
    net, _, clock, make = world
    holder = FakeReplica(net, "h", max_ongoing=1, loaded={"m": 5.0})
    router = await make(holder)
    first, second = start(router, "m"), start(router, "m")
    await clock.advance(0.2)
    assert set(holder.touches) == {"m"}
    assert 2 <= len(holder.touches) <= 5  # rate-limited to one per 50 ms, not one per tick
    await holder.reply_all()
    await holder.reply_all()
    assert await asyncio.gather(first, second) == ["h", "h"]


# ---- bounded memory --------------------------------------------------------------------------


async def test_100_000_distinct_model_ids_leave_the_routers_structures_bounded(world):
    net, _, _, make = world
    a = FakeReplica(net, "a", max_ongoing=64, auto_reply=True, capacity=4)
    b = FakeReplica(net, "b", max_ongoing=64, auto_reply=True, capacity=4)
    router = await make(a, b)
    batch = 500
    for start_id in range(0, 100_000, batch):
        await asyncio.gather(
            *(router.call("__call__", model_id=f"id-{i}") for i in range(start_id, start_id + batch))
        )
    sizes = router.sizes()
    assert sizes["queued"] == 0 and sizes["sent_loads"] == 0
    assert sizes["spill_debts"] <= placement_module.MAX_SPILL_DEBTS
    assert sizes["reminders"] <= 2 * 1024
    assert sizes["demand_ids"] <= demand_module.MAX_DEMAND_IDS
    assert all(len(v.loaded) <= 4 for v in router._registry)


def test_spill_debts_are_bounded_by_max_entries():
    from modelplex._data.routing import SpillMeter

    meter = SpillMeter(max_entries=100)
    for i in range(100_000):
        meter.add(f"id-{i}", 0.5, now=i * 0.001)
    assert len(meter) <= 100
    assert meter.debt("id-99999", now=100.0) > 0  # the newest are kept



# ---- reports for autoscaling -----------------------------------------------------------------


async def test_a_report_counts_load_misses_and_demand(world):
    net, directory, _, make = world
    a = FakeReplica(net, "a", max_ongoing=1, loaded={"warm": 0.2})
    router = await make(a)
    calls = [start(router, "warm"), start(router, "cold"), start(router, "cold")]
    await settle()
    report = router.report()
    assert (report.ongoing, report.queued) == (1, 2)
    assert (report.placed, report.misses) == (1, 0)  # "warm" was held: a hit
    assert dict(report.held) == {"a": (("warm", 0.2),)}
    while a.pending:
        await a.reply_all()
    await asyncio.gather(*calls)
    report = router.report()
    assert (report.placed, report.misses) == (2, 1)  # the first "cold" loaded it, then a hit
    assert dict(report.models) == {"cold": 2}
    assert router.report().placed == 0  # counts are since the last report


async def test_a_request_for_a_deployment_with_no_replica_is_reported_at_once(world):
    _, directory, _, make = world
    router = await make()  # published with no replica: scaled to zero
    waiting = start(router, "m")
    await settle()
    assert [r.queued for r in directory.reports] == [1]
    waiting.cancel()
    await settle()


# ---- streams ---------------------------------------------------------------------------------


async def open_stream(router, replica, model_id: str, items):
    """Start a streamed call and have ``replica`` send ``items`` as chunks: (stream, channel,
    the call as the replica got it)."""
    call = start(router, model_id, stream=True)
    await settle()
    channel, sent = replica.pending.pop()
    for item in items:
        channel.send_nowait(Chunk(sent.request_id, pickle.dumps(item)))
    await settle()
    return call.result(), channel, sent


async def test_a_stream_keeps_its_slot_until_it_ends_and_returns_credit(world):
    net, _, _, make = world
    a = FakeReplica(net, "a", max_ongoing=1)
    router = await make(a)
    stream, channel, sent = await open_stream(router, a, "m", range(9))
    assert await stream.next_batch() == list(range(9))
    await settle()
    assert a.credits == [(sent.request_id, 9)]
    waiting = start(router, "m")  # the one slot is the stream's
    await settle()
    assert len(a.calls) == 1 and not waiting.done()
    channel.send_nowait(Result(sent.request_id, True, pickle.dumps(None)))
    await settle()
    assert await stream.next_batch() == []
    await settle()
    assert len(a.calls) == 2  # the slot came free when the stream ended
    await a.reply_all()
    assert await waiting == "a"


async def test_a_stream_closed_by_its_reader_is_cancelled_in_the_replica(world):
    net, _, _, make = world
    a = FakeReplica(net, "a", max_ongoing=1)
    router = await make(a)
    stream, _, sent = await open_stream(router, a, "", ["first"])
    stream.close()
    await settle()
    assert a.cancels == [sent.request_id]
    assert router._registry.get("a").ongoing == 0


async def test_a_stream_on_a_lost_connection_fails_with_replica_died(world):
    net, _, _, make = world
    a = FakeReplica(net, "a")
    router = await make(a)
    stream, _, _ = await open_stream(router, a, "", [0])
    net.sever(a.address)
    await settle()
    with pytest.raises(ReplicaDiedError):  # items not yet read are dropped with the connection
        await stream.next_batch()
