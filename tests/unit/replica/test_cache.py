"""ModelCache: loading, sharing, eviction, unloading, management. Fake loaders, no sleeps."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import warnings
from dataclasses import FrozenInstanceError, dataclass

import pytest

from modelplex._replica.cache import ModelCache, ModelInfo, ModelsSnapshot
from modelplex._errors import ModelLoadTimeoutError, ModelTooLargeError
from modelplex._replica.eviction import LRUPolicy, TinyLFUPolicy

from tests.fakes import FakeClock

LOGGER = "test.modelplex.cache"


# ---- fakes ------------------------------------------------------------------------------------


class Model:
    """Records its own __del__ into the shared event list."""

    def __init__(self, model_id, events, size=None):
        self.model_id = model_id
        self.events = events
        self.size = size

    def __del__(self):
        self.events.append(f"del {self.model_id}")


class AsyncDelModel(Model):
    async def __del__(self):  # type: ignore[override]
        await asyncio.sleep(0)
        self.events.append(f"adel {self.model_id} on-loop={threading.current_thread() is threading.main_thread()}")


class Loader:
    """An async loader whose loads can be held at a gate or made to fail."""

    def __init__(self, model_cls=Model, sizes=None):
        self.model_cls = model_cls
        self.sizes = sizes or {}
        self.calls: list[str] = []
        self.events: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.started: dict[str, asyncio.Event] = {}
        self.failures: dict[str, BaseException] = {}
        self.cancelled: list[str] = []

    def gate(self, model_id):
        self.gates[model_id] = asyncio.Event()
        return self.gates[model_id]

    def started_event(self, model_id):
        return self.started.setdefault(model_id, asyncio.Event())

    async def __call__(self, model_id):
        self.calls.append(model_id)
        self.events.append(f"load {model_id}")
        self.started_event(model_id).set()
        try:
            gate = self.gates.get(model_id)
            if gate is not None:
                await gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(model_id)
            raise
        if model_id in self.failures:
            raise self.failures[model_id]
        return self.model_cls(model_id, self.events, self.sizes.get(model_id))


@pytest.fixture
async def make():
    """Build caches and close them all at the end, so no background task outlives a test."""
    caches = []

    def factory(loader=None, **kwargs):
        loader = loader if loader is not None else Loader()
        kwargs.setdefault("logger", logging.getLogger(LOGGER))
        cache = ModelCache(loader, **kwargs)
        caches.append(cache)
        return cache, loader

    yield factory
    for cache in caches:
        await cache.close(timeout_s=0)


async def wait_started(loader, model_id):
    await asyncio.wait_for(loader.started_event(model_id).wait(), 1)


def spawn(coro):
    return asyncio.get_running_loop().create_task(coro)


async def ticks(n=5):
    for _ in range(n):
        await asyncio.sleep(0)


# ---- LRU and __del__ --------------------------------------------------------------------------


async def test_lru_order_and_del_on_eviction(make):
    cache, loader = make(max_models=2)
    for model_id in ["1", "2", "1", "3"]:
        model = await cache.get(model_id)
        assert model.model_id == model_id
    del model
    assert cache.loaded_ids() == ("1", "3")
    await cache.wait_for_unloads()
    assert loader.events == ["load 1", "load 2", "load 3", "del 2"]
    await cache.get("1")
    await cache.get("3")
    assert loader.calls == ["1", "2", "3"]


async def test_del_runs_exactly_once_even_after_gc(make):
    cache, loader = make(max_models=1)
    model = await cache.get("a")
    await cache.get("b")
    await cache.wait_for_unloads()
    assert loader.events.count("del a") == 1
    # Still the user's class as far as isinstance is concerned.
    assert isinstance(model, Model)
    model.__del__()  # the disarmed __del__ is a no-op
    del model
    gc.collect()
    assert loader.events.count("del a") == 1


async def test_async_del_is_awaited_on_the_loop_once(make):
    cache, loader = make(loader=Loader(AsyncDelModel), max_models=1)
    model = await cache.get("a")
    await cache.get("b")
    await cache.wait_for_unloads()
    assert loader.events[-1] == "adel a on-loop=True"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del model
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert [e for e in loader.events if e.startswith("adel")] == ["adel a on-loop=True"]


async def test_sync_del_runs_off_the_loop(make):
    threads = []

    class ThreadModel(Model):
        def __del__(self):
            threads.append(threading.current_thread())

    cache, _ = make(loader=Loader(ThreadModel), max_models=1)
    await cache.get("a")
    await cache.get("b")
    await cache.wait_for_unloads()
    assert len(threads) == 1 and threads[0] is not threading.main_thread()


async def test_models_without_del_unload_quietly(make):
    cache, _ = make(loader=lambda m: asyncio.sleep(0, result={"id": m}), max_models=1)
    assert await cache.get("a") == {"id": "a"}
    await cache.get("b")
    await cache.wait_for_unloads()
    assert cache.loaded_ids() == ("b",)


async def test_del_of_slotted_and_frozen_classes_runs_once(make):
    events = []

    class Slotted:
        __slots__ = ("model_id",)

        def __init__(self, model_id):
            self.model_id = model_id

        def __del__(self):
            events.append(f"del {self.model_id}")

    @dataclass(frozen=True)
    class Frozen:
        model_id: str

        def __del__(self):
            events.append(f"del {self.model_id}")

    kinds = {"s": Slotted, "f": Frozen}

    async def load(model_id):
        return kinds[model_id[0]](model_id)

    cache, _ = make(loader=load, max_models=1)
    kept = [await cache.get("s1"), await cache.get("f1"), await cache.get("s2")]
    await cache.wait_for_unloads()
    assert sorted(events) == ["del f1", "del s1"]
    with pytest.raises(FrozenInstanceError):
        kept[1].model_id = "x"  # still frozen after disarming
    del kept
    gc.collect()
    assert sorted(events) == ["del f1", "del s1"]


async def test_del_that_raises_is_logged_and_the_cache_carries_on(make, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    calls = []

    class Bad(Model):
        def __del__(self):
            calls.append(self.model_id)
            raise RuntimeError("cannot free")

    cache, _ = make(loader=Loader(Bad), max_models=1)
    model = await cache.get("a")
    await cache.get("b")
    await cache.wait_for_unloads()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == ["Error in __del__ of model 'a'."]
    assert isinstance(errors[0].exc_info[1], RuntimeError)
    assert (await cache.get("c")).model_id == "c"
    del model
    gc.collect()
    assert calls == ["a", "b"]  # b by the eviction for c; a never a second time


async def test_a_class_that_cannot_be_disarmed_still_unloads(make):
    calls = []

    class NoSubclasses:
        def __init_subclass__(cls, **kwargs):
            raise TypeError("final")

        def __init__(self, model_id):
            self.model_id = model_id

        def __del__(self):
            calls.append(self.model_id)

    async def load(model_id):
        return NoSubclasses(model_id)

    cache, _ = make(loader=load, max_models=1)
    await cache.get("a")
    await cache.get("b")
    await cache.wait_for_unloads()
    # The cache ran __del__; with no way to swap the class, the GC may run it once more.
    assert calls[:1] == ["a"]
    assert cache.loaded_ids() == ("b",)


# ---- references: in use, draining, resurrection -----------------------------------------------


async def test_model_in_use_survives_eviction_until_released(make):
    cache, loader = make(max_models=1)
    model, release = await cache.acquire("1")
    await cache.get("2")
    await cache.wait_for_unloads()
    assert cache.loaded_ids() == ("2",)
    assert "del 1" not in loader.events
    assert model.model_id == "1"
    release()
    await cache.wait_for_unloads()
    assert loader.events.count("del 1") == 1
    release()  # idempotent
    await cache.wait_for_unloads()
    assert loader.events.count("del 1") == 1


async def test_release_is_idempotent_per_holder(make):
    cache, _ = make()
    _, release_a = await cache.acquire("m")
    _, release_b = await cache.acquire("m")
    assert cache.snapshot().loaded[0].in_use == 2
    release_a()
    release_a()
    assert cache.snapshot().loaded[0].in_use == 1
    release_b()
    assert cache.snapshot().loaded[0].in_use == 0


async def test_get_holds_nothing(make):
    cache, _ = make()
    await cache.get("m")
    assert cache.snapshot().loaded[0].in_use == 0


async def test_acquire_of_a_draining_model_resurrects_it(make):
    changes = []
    cache, loader = make(max_models=1, on_change=lambda: changes.append(cache.loaded_ids()))
    model, release = await cache.acquire("1")
    await cache.get("2")  # evicts 1, still held: draining
    changes.clear()
    again, release_again = await cache.acquire("1")
    assert again is model
    assert loader.calls == ["1", "2"]  # no reload
    assert cache.loaded_ids() == ("1",)  # 2 made way
    assert changes == [("1",)]
    await cache.wait_for_unloads()
    assert "del 2" in loader.events and "del 1" not in loader.events
    release()
    release_again()
    await cache.wait_for_unloads()
    assert "del 1" not in loader.events
    assert cache.snapshot().loaded[0].in_use == 0


async def test_reference_is_taken_before_acquire_first_awaits(make):
    """Both loads finish before the waiter for "a" resumes; b's eviction of a must not unload it."""
    cache, loader = make(max_models=1)
    gate_a, gate_b = loader.gate("a"), loader.gate("b")
    task_a = spawn(cache.acquire("a"))
    task_b = spawn(cache.acquire("b"))
    await wait_started(loader, "a")
    await wait_started(loader, "b")
    gate_a.set()
    gate_b.set()
    (model_a, release_a), (_, release_b) = await asyncio.gather(task_a, task_b)
    await cache.wait_for_unloads()
    assert cache.loaded_ids() == ("b",)
    assert model_a.model_id == "a" and "del a" not in loader.events
    release_a()
    release_b()
    await cache.wait_for_unloads()
    assert loader.events.count("del a") == 1


async def test_release_from_another_thread_hops_to_the_loop(make):
    cache, loader = make(max_models=1)
    _, release = await cache.acquire("1")
    await cache.get("2")
    await asyncio.to_thread(release)
    await ticks()
    await cache.wait_for_unloads()
    assert loader.events.count("del 1") == 1


# ---- single flight and concurrency ------------------------------------------------------------


async def test_concurrent_acquires_share_one_load(make):
    cache, loader = make()
    gate = loader.gate("m")
    tasks = [spawn(cache.acquire("m")) for _ in range(5)]
    await wait_started(loader, "m")
    await ticks()
    snap = cache.snapshot()
    assert snap.loading == ("m",) and snap.loaded == ()
    gate.set()
    results = await asyncio.gather(*tasks)
    assert loader.calls == ["m"]
    assert len({id(model) for model, _ in results}) == 1
    assert cache.snapshot().loaded[0].in_use == 5
    for _, release in results:
        release()
    assert cache.snapshot().loaded[0].in_use == 0


async def test_cancelled_waiter_does_not_cancel_the_shared_load(make):
    cache, loader = make()
    gate = loader.gate("m")
    lone = spawn(cache.acquire("m"))
    await wait_started(loader, "m")
    lone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await lone
    other = spawn(cache.acquire("m"))
    also = spawn(cache.acquire("m"))
    await ticks()
    also.cancel()
    gate.set()
    model, release = await other
    assert loader.calls == ["m"] and loader.cancelled == []
    assert cache.snapshot().loaded[0].in_use == 1  # the cancelled waiters let go
    release()
    assert "m" in cache


async def test_load_finishes_and_is_cached_when_every_waiter_left(make):
    cache, loader = make()
    gate = loader.gate("m")
    waiter = spawn(cache.acquire("m"))
    await wait_started(loader, "m")
    waiter.cancel()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    while "m" not in cache:
        await asyncio.sleep(0)
    assert cache.snapshot().loaded[0].in_use == 0
    assert (await cache.get("m")).model_id == "m"
    assert loader.calls == ["m"]


async def test_loads_of_distinct_models_overlap(make):
    cache, loader = make(max_models=4)

    async def load(model_id):
        loader.started_event(model_id).set()
        other = "b" if model_id == "a" else "a"
        await loader.started_event(other).wait()  # deadlocks if loads run one at a time
        return model_id

    cache._loader = load  # same cache, a loader that needs a partner
    assert await asyncio.wait_for(asyncio.gather(cache.get("a"), cache.get("b")), 2) == ["a", "b"]


async def test_loading_entries_do_not_count_toward_the_limit(make):
    cache, loader = make(max_models=1)
    await cache.get("1")
    gates = [loader.gate("2"), loader.gate("3")]
    tasks = [spawn(cache.get("2")), spawn(cache.get("3"))]
    await wait_started(loader, "3")
    snap = cache.snapshot()
    assert [i.model_id for i in snap.loaded] == ["1"] and snap.loading == ("2", "3")
    for gate in gates:
        gate.set()
    await asyncio.gather(*tasks)
    assert cache.loaded_ids() == ("3",)


async def test_any_callable_returning_an_awaitable(make):
    def loader(model_id):
        future = asyncio.get_running_loop().create_future()
        future.set_result(f"model {model_id}")
        return future

    cache, _ = make(loader=loader)
    assert await cache.get("x") == "model x"


# ---- failures ---------------------------------------------------------------------------------


async def test_failed_load_leaves_the_cache_as_it_was_and_retries(make):
    # The clock moves a second a call: past any backoff (see the backoff test below).
    cache, loader = make(max_models=2, clock=FakeClock(tick=1.0))
    await cache.get("1")
    await cache.get("2")
    boom = RuntimeError("cannot load model bad")
    loader.failures["bad"] = boom
    with pytest.raises(RuntimeError) as info:
        await cache.get("bad")
    assert info.value is boom
    assert boom._modelplex_logged  # the requests it fails log one line, not its traceback again
    assert cache.loaded_ids() == ("1", "2")
    assert cache.snapshot().loading == ()
    await cache.wait_for_unloads()
    assert not [e for e in loader.events if e.startswith("del")]
    with pytest.raises(RuntimeError):
        await cache.get("bad")
    assert loader.calls == ["1", "2", "bad", "bad"]
    del loader.failures["bad"]
    assert (await cache.get("bad")).model_id == "bad"


async def test_every_waiter_gets_the_loaders_own_exception(make):
    cache, loader = make()
    gate = loader.gate("m")
    boom = ValueError("bad weights")
    loader.failures["m"] = boom
    tasks = [spawn(cache.acquire("m")) for _ in range(3)]
    await wait_started(loader, "m")
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(r is boom for r in results)
    assert loader.calls == ["m"]
    assert "m" not in cache and len(cache) == 0


async def test_timeout_cancels_the_loader(make):
    cache, loader = make(load_timeout_s=0.01)
    loader.gate("slow")  # never opened
    tasks = [spawn(cache.acquire("slow")) for _ in range(2)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for error in results:
        assert isinstance(error, ModelLoadTimeoutError)
        assert error.model_id == "slow" and error.timeout_s == 0.01
    assert results[0] is results[1]
    await ticks()
    assert loader.cancelled == ["slow"]
    assert "slow" not in cache and cache.snapshot().loading == ()


async def test_a_loaders_own_timeout_error_is_not_relabelled(make):
    cache, loader = make(load_timeout_s=5)
    loader.failures["m"] = TimeoutError("upstream storage timed out")
    with pytest.raises(TimeoutError) as info:
        await cache.get("m")
    assert not isinstance(info.value, ModelLoadTimeoutError)


async def test_fast_loads_beat_the_timeout(make):
    cache, _ = make(load_timeout_s=5)
    assert (await cache.get("m")).model_id == "m"


async def test_model_from_a_loader_that_ignores_the_timeout_is_unloaded(make):
    events = []
    release_loader = asyncio.Event()

    async def stubborn(model_id):
        while True:
            try:
                await release_loader.wait()
                return Model(model_id, events)
            except asyncio.CancelledError:
                continue  # ignores cancellation

    cache, _ = make(loader=stubborn, load_timeout_s=0.01)
    with pytest.raises(ModelLoadTimeoutError):
        await cache.get("m")
    release_loader.set()
    await ticks()
    await cache.wait_for_unloads()
    assert events == ["del m"]
    assert "m" not in cache


async def test_too_large_model_is_refused_and_unloaded(make):
    loader = Loader(sizes={"small": 40, "huge": 200})
    cache, _ = make(loader=loader, max_bytes=100, sizer=lambda m: m.size)
    await cache.get("small")
    gate = loader.gate("huge")
    tasks = [spawn(cache.get("huge")) for _ in range(2)]
    await wait_started(loader, "huge")
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for error in results:
        assert isinstance(error, ModelTooLargeError)
        assert (error.model_id, error.size, error.limit) == ("huge", 200, 100)
    await cache.wait_for_unloads()
    assert loader.events == ["load small", "load huge", "del huge"]
    assert cache.loaded_ids() == ("small",)


async def test_bad_sizer_results_fail_the_load(make):
    loader = Loader()
    cache, _ = make(loader=loader, sizer=lambda m: "big")
    with pytest.raises(TypeError, match="'big'"):
        await cache.get("m")
    await cache.wait_for_unloads()
    assert loader.events == ["load m", "del m"]
    assert len(cache) == 0


async def test_a_sizer_that_raises_fails_the_load_and_is_logged(make, caplog):
    def sizer(model):
        raise ValueError("cannot measure")

    cache, loader = make(sizer=sizer)
    with pytest.raises(ValueError, match="cannot measure"):
        await cache.get("m")
    await cache.wait_for_unloads()
    assert loader.events == ["load m", "del m"]
    assert "Failed to measure the size of model 'm'." in caplog.text
    assert len(cache) == 0 and cache.snapshot().loading == ()


# ---- byte budget ------------------------------------------------------------------------------


async def test_byte_budget_evicts_least_recently_used(make):
    loader = Loader(sizes={"a": 40, "b": 40, "c": 40, "unknown": None})
    cache, _ = make(loader=loader, max_models=-1, max_bytes=100, sizer=lambda m: m.size)
    await cache.get("a")
    await cache.get("b")
    await cache.get("unknown")
    assert cache.total_bytes == 80
    await cache.get("a")
    await cache.get("c")
    assert cache.loaded_ids() == ("unknown", "a", "c")
    assert [i.size for i in cache.snapshot().loaded] == [None, 40, 40]
    await cache.wait_for_unloads()
    assert "del b" in loader.events


async def test_default_sizer_reads_nbytes(make):
    class Array(Model):
        @property
        def nbytes(self):
            return self.size

    loader = Loader(Array, sizes={"a": 60, "b": 60})
    cache, _ = make(loader=loader, max_models=-1, max_bytes=100)
    await cache.get("a")
    await cache.get("b")
    assert cache.loaded_ids() == ("b",)


# ---- bookkeeping, policy, snapshot ------------------------------------------------------------


async def test_bookkeeping_reaches_the_policy(make):
    seen = []

    class Recording(LRUPolicy):
        def victims(self, entries, **kwargs):
            seen.append((list(entries), kwargs))
            return super().victims(entries, **kwargs)

    clock = FakeClock(tick=0.5)
    cache, _ = make(max_models=2, policy=Recording(), clock=clock)
    await cache.get("a")
    await cache.get("a")
    await cache.get("a")
    await cache.get("b")
    await cache.get("c")
    (entries, kwargs), = seen
    assert kwargs == {"max_models": 2, "max_bytes": None, "protect": frozenset({"c"})}
    by_id = {e.model_id: e for e in entries}
    assert by_id["a"].hits == 3 and by_id["b"].hits == 1 and by_id["c"].hits == 1
    assert by_id["a"].last_used < by_id["b"].last_used < by_id["c"].last_used
    assert by_id["a"].load_s == 0.5 and not by_id["a"].pinned


async def test_policy_may_not_evict_pinned_or_protected(make):
    class Greedy:
        name = "greedy"

        def victims(self, entries, *, max_models, max_bytes, protect=frozenset()):
            return [e.model_id for e in entries] + ["nonexistent"]

    cache, _ = make(max_models=2, policy=Greedy())
    await cache.get("a")
    cache.pin("a")
    await cache.get("b")
    await cache.get("c")
    assert cache.loaded_ids() == ("a", "c")


async def test_snapshot_is_ordered_and_frozen(make):
    clock = FakeClock(tick=1.0)
    cache, loader = make(clock=clock)
    await cache.get("a")
    _, release = await cache.acquire("b")
    await cache.get("a")
    gate = loader.gate("c")
    task = spawn(cache.get("c"))
    await wait_started(loader, "c")
    snap = cache.snapshot()
    assert isinstance(snap, ModelsSnapshot)
    assert [i.model_id for i in snap.loaded] == ["b", "a"]
    assert snap.loading == ("c",)
    info_b = snap.loaded[0]
    assert isinstance(info_b, ModelInfo)
    assert (info_b.in_use, info_b.pinned, info_b.size) == (1, False, None)
    assert info_b.load_s == 1.0
    assert snap.loaded[0].last_used < snap.loaded[1].last_used
    with pytest.raises(FrozenInstanceError):
        snap.loading = ()  # type: ignore[misc]
    gate.set()
    await task
    release()
    assert len(cache) == 3 and "c" in cache and "zzz" not in cache


# ---- on_change --------------------------------------------------------------------------------


async def test_on_change_follows_every_change_of_the_id_sets(make):
    seen = []
    cache, loader = make(
        max_models=1, on_change=lambda: seen.append((cache.loaded_ids(), cache.snapshot().loading))
    )
    await cache.get("a")
    assert seen == [((), ("a",)), (("a",), ())]
    seen.clear()
    await cache.get("a")  # a hit changes nothing
    assert seen == []
    await cache.get("b")  # load start, then success with eviction: one call
    assert seen == [(("a",), ("b",)), (("b",), ())]
    seen.clear()
    loader.failures["bad"] = RuntimeError("no")
    with pytest.raises(RuntimeError):
        await cache.get("bad")
    assert seen == [(("b",), ("bad",)), (("b",), ())]
    seen.clear()
    assert await cache.unload("b")
    assert seen == [((), ())]


async def test_a_failing_on_change_does_not_break_the_cache(make, caplog):
    def broken():
        raise RuntimeError("listener bug")

    cache, _ = make(on_change=broken)
    assert (await cache.get("m")).model_id == "m"
    assert "on_change callback failed" in caplog.text


# ---- logging ----------------------------------------------------------------------------------


async def test_log_lines(make, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    cache, loader = make(max_models=1, clock=FakeClock(tick=0.0123))
    await cache.get("a")
    await cache.get("b")
    await cache.wait_for_unloads()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    assert lines == [
        ("INFO", "Loading model 'a'."),
        ("INFO", "Successfully loaded model 'a' in 12.3ms."),
        ("INFO", "Loading model 'b'."),
        ("INFO", "Successfully loaded model 'b' in 12.3ms."),
        ("INFO", "Unloading model 'a'."),
        ("INFO", "Successfully unloaded model 'a' in 12.3ms."),
    ]
    files = [r.filename for r in caplog.records if r.name == LOGGER]
    assert files == ["cache.py"] * 4 + ["unloads.py"] * 2


async def test_failed_load_is_logged_with_its_traceback(make, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    cache, loader = make()
    loader.failures["bad"] = RuntimeError("cannot load model bad")
    with pytest.raises(RuntimeError):
        await cache.get("bad")
    record = [r for r in caplog.records if r.levelno == logging.ERROR][-1]
    assert record.getMessage() == "Failed to load model 'bad'."
    assert record.exc_info[1] is loader.failures["bad"]


async def test_default_logger_is_the_replica_logger(caplog):
    caplog.set_level(logging.INFO, logger="modelplex.replica")
    cache = ModelCache(Loader())
    await cache.get("m")
    assert any(r.name == "modelplex.replica" and "Loading model 'm'." in r.getMessage() for r in caplog.records)
    await cache.close()


# ---- management: pin, unload, resize, close ---------------------------------------------------


async def test_pinned_models_are_never_evicted(make):
    cache, loader = make(max_models=2)
    await cache.get("a")
    cache.pin("a")
    await cache.get("b")
    await cache.get("c")
    assert cache.loaded_ids() == ("a", "c")
    assert cache.snapshot().loaded[0].pinned
    cache.unpin("a")
    await cache.get("d")
    assert cache.loaded_ids() == ("c", "d")


async def test_pinning_unknown_ids_names_them(make):
    cache, _ = make()
    with pytest.raises(KeyError, match="ghost"):
        cache.pin("ghost")
    with pytest.raises(KeyError, match="ghost"):
        cache.unpin("ghost")


async def test_pins_can_hold_the_cache_over_its_limit_until_unpinned(make, caplog):
    cache, _ = make(max_models=1)
    await cache.get("a")
    cache.pin("a")
    await cache.get("b")
    assert cache.loaded_ids() == ("a", "b")
    assert "over its limits" in caplog.text
    cache.unpin("a")
    assert cache.loaded_ids() == ("b",)


async def test_unload(make):
    cache, loader = make()
    await cache.get("a")
    cache.pin("a")
    assert await cache.unload("a") is True
    assert loader.events == ["load a", "del a"]  # already ran: unload waits for it
    assert await cache.unload("a") is False
    assert await cache.unload("never") is False


async def test_unload_of_a_model_in_use_drains(make):
    cache, loader = make()
    _, release = await cache.acquire("a")
    assert await cache.unload("a") is True
    assert "a" not in cache and "del a" not in loader.events
    release()
    await cache.wait_for_unloads()
    assert loader.events[-1] == "del a"


async def test_resize_shrinks_at_once_and_validates(make):
    changes = []
    cache, loader = make(
        max_models=3, sizer=lambda m: 10, on_change=lambda: changes.append(cache.loaded_ids())
    )
    for model_id in "abc":
        await cache.get(model_id)
    changes.clear()
    cache.resize(max_models=1)
    assert cache.loaded_ids() == ("c",) and cache.max_models == 1
    assert changes == [("c",)]
    await cache.wait_for_unloads()
    assert sorted(e for e in loader.events if e.startswith("del")) == ["del a", "del b"]
    cache.resize(max_models=-1, max_bytes=25)
    assert (cache.max_models, cache.max_bytes) == (-1, 25)
    for model_id in "de":
        await cache.get(model_id)
    assert cache.loaded_ids() == ("d", "e")
    cache.resize(max_bytes=None)
    assert cache.max_bytes is None and cache.max_models == -1
    with pytest.raises(ValueError, match="max_models"):
        cache.resize(max_models=0)
    with pytest.raises(TypeError, match="max_bytes"):
        cache.resize(max_models=5, max_bytes="1GB")
    assert (cache.max_models, cache.max_bytes) == (-1, None)  # a bad resize changes nothing


async def test_close_unloads_everything_and_cancels_loads(make):
    cache, loader = make()
    await cache.get("a")
    loader.gate("slow")
    waiter = spawn(cache.acquire("slow"))
    await wait_started(loader, "slow")
    await cache.close()
    assert loader.cancelled == ["slow"]
    with pytest.raises(RuntimeError, match="closed"):
        await waiter
    assert loader.events == ["load a", "load slow", "del a"]
    assert cache.snapshot() == ModelsSnapshot((), ())
    with pytest.raises(RuntimeError, match="closed"):
        await cache.acquire("a")
    await cache.close()  # twice is fine


async def test_close_cancels_a_load_that_has_not_started(make):
    cache, loader = make()
    waiter = spawn(cache.acquire("m"))
    await asyncio.sleep(0)  # acquire ran and created the load task, which has not run yet
    await cache.close()
    with pytest.raises(RuntimeError, match="closed"):
        await waiter
    assert loader.calls == []


async def test_close_waits_for_models_in_use(make):
    cache, loader = make()
    _, release = await cache.acquire("a")
    closing = spawn(cache.close(timeout_s=10))
    await ticks()
    assert not closing.done() and "del a" not in loader.events
    release()
    await asyncio.wait_for(closing, 1)
    assert loader.events[-1] == "del a"


async def test_close_unloads_models_still_in_use_after_its_timeout(make, caplog):
    cache, loader = make()
    _, release = await cache.acquire("a")
    await cache.close(timeout_s=0.01)
    assert loader.events == ["load a", "del a"]
    assert "unloading it anyway" in caplog.text
    release()  # late release: nothing more happens
    await ticks()
    assert loader.events == ["load a", "del a"]


# ---- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, needle",
    [
        ({"max_models": 0}, ValueError, "max_models"),
        ({"max_models": -2}, ValueError, "max_models"),
        ({"max_models": 1.5}, TypeError, "max_models"),
        ({"max_models": True}, TypeError, "max_models"),
        ({"max_models": "3"}, TypeError, "max_models"),
        ({"max_bytes": 0}, ValueError, "max_bytes"),
        ({"max_bytes": -1}, ValueError, "max_bytes"),
        ({"max_bytes": 1.0}, TypeError, "max_bytes"),
        ({"max_bytes": False}, TypeError, "max_bytes"),
        ({"load_timeout_s": 0}, ValueError, "load_timeout_s"),
        ({"load_timeout_s": -1.0}, ValueError, "load_timeout_s"),
        ({"load_timeout_s": float("nan")}, ValueError, "load_timeout_s"),
        ({"load_timeout_s": float("inf")}, ValueError, "load_timeout_s"),
        ({"load_timeout_s": "1"}, ValueError, "load_timeout_s"),  # as @serve.multiplexed says
        ({"load_timeout_s": True}, ValueError, "load_timeout_s"),
    ],
)
def test_constructor_validation_names_parameter_and_value(kwargs, error, needle):
    with pytest.raises(error) as info:
        ModelCache(Loader(), **kwargs)
    (value,) = kwargs.values()
    assert needle in str(info.value) and repr(value) in str(info.value)


def test_valid_limits():
    for kwargs in [{"max_models": -1}, {"max_models": 1}, {"max_bytes": 1}, {"load_timeout_s": 0.5}]:
        ModelCache(Loader(), **kwargs)
    cache = ModelCache(Loader(), max_models=7, max_bytes=None, load_timeout_s=2)
    assert (cache.max_models, cache.max_bytes, cache.load_timeout_s) == (7, None, 2.0)


def test_loader_must_be_callable():
    with pytest.raises(TypeError, match="loader"):
        ModelCache("not a loader")  # type: ignore[arg-type]


# ---- admission policy (TinyLFU) ---------------------------------------------------------------


async def warm(cache, *ids):
    for model_id in ids:
        await cache.get(model_id)


async def test_tinylfu_keeps_the_hot_set_and_serves_then_unloads_a_one_hit_wonder(make):
    changes = []
    cache, loader = make(
        max_models=2, policy=TinyLFUPolicy(), clock=FakeClock(tick=1.0),
        on_change=lambda: changes.append((cache.loaded_ids(), cache.snapshot().loading)),
    )
    await warm(cache, *"ababab")
    changes.clear()
    model, release = await cache.acquire("wonder")
    assert model.model_id == "wonder"  # served to the request that loaded it
    assert set(cache.loaded_ids()) == {"a", "b"}  # the hot set stays
    assert "wonder" not in cache
    await cache.wait_for_unloads()
    assert not any(e.startswith("del") for e in loader.events)  # nothing unloaded under it
    release()
    await cache.wait_for_unloads()
    assert [e for e in loader.events if e.startswith("del")] == ["del wonder"]
    assert changes == [(("a", "b"), ("wonder",)), (("a", "b"), ())]  # never shown loaded
    await warm(cache, "a", "b")
    assert loader.calls == ["a", "b", "wonder"]  # no reloads of the hot set


async def test_tinylfu_refused_model_with_no_request_left_unloads_at_once(make):
    cache, loader = make(max_models=1, policy=TinyLFUPolicy())
    await warm(cache, *"aaa")
    await cache.get("b")
    await cache.wait_for_unloads()
    assert cache.loaded_ids() == ("a",)
    assert loader.events[-1] == "del b"


async def test_tinylfu_admits_a_newcomer_once_it_is_requested_often_enough(make):
    cache, loader = make(max_models=2, policy=TinyLFUPolicy(), clock=FakeClock(tick=1.0))
    await warm(cache, *"aaabbbb")
    for _ in range(3):
        await cache.get("c")  # refused while rarer than a
        await cache.wait_for_unloads()
    assert loader.calls == ["a", "b", "c", "c", "c"]
    assert set(cache.loaded_ids()) == {"b", "c"}  # c displaced a once as frequent (3)
    await cache.wait_for_unloads()
    assert loader.events.count("del a") == 1 and loader.events.count("del c") == 2


async def test_tinylfu_shared_load_of_a_refused_model_serves_every_waiter(make):
    cache, loader = make(max_models=1, policy=TinyLFUPolicy())
    await warm(cache, *"aaaa")
    gate = loader.gate("n")
    tasks = [spawn(cache.acquire("n")) for _ in range(2)]
    await wait_started(loader, "n")
    gate.set()
    (first, release_first), (second, release_second) = await asyncio.gather(*tasks)
    assert first is second and first.model_id == "n"
    assert cache.loaded_ids() == ("a",)
    release_first()
    await cache.wait_for_unloads()
    assert "del n" not in loader.events
    release_second()
    await cache.wait_for_unloads()
    assert loader.events.count("del n") == 1


async def test_tinylfu_refused_model_asked_again_while_in_use_is_not_reloaded(make):
    cache, loader = make(max_models=1, policy=TinyLFUPolicy())
    await warm(cache, *"aaa")
    model, release = await cache.acquire("n")  # refused: draining under its request
    for _ in range(3):
        again, release_again = await cache.acquire("n")  # resurrected, counted again
        assert again is model
        release_again()
    assert loader.calls == ["a", "n"]
    assert cache.loaded_ids() == ("n",)  # n (4) now outranks a (3)
    release()
    await cache.wait_for_unloads()
    assert "del n" not in loader.events and "del a" in loader.events


async def test_every_acquire_reaches_record_access(make):
    seen = []

    class Recording(TinyLFUPolicy):
        def record_access(self, model_id, now):
            seen.append((model_id, now))
            super().record_access(model_id, now)

    clock = FakeClock(tick=1.0)
    cache, loader = make(max_models=1, policy=Recording(), clock=clock)
    gate = loader.gate("a")
    waiters = [spawn(cache.get("a")) for _ in range(2)]  # miss, then join the load
    await wait_started(loader, "a")
    gate.set()
    await asyncio.gather(*waiters)
    await cache.get("a")  # hit
    assert [m for m, _ in seen] == ["a", "a", "a"]
    assert [now for _, now in seen] == sorted(now for _, now in seen)  # the injected clock


async def test_lru_policy_calls_are_unchanged(make):
    seen = []

    class Recording(LRUPolicy):
        def victims(self, entries, **kwargs):
            seen.append(kwargs)
            return super().victims(entries, **kwargs)

    cache, _ = make(max_models=1, policy=Recording())
    await warm(cache, "a", "b")
    assert seen == [{"max_models": 1, "max_bytes": None, "protect": frozenset({"b"})}]


async def test_admit_keeps_a_model_an_admission_policy_would_refuse():
    from modelplex._replica.eviction import TinyLFUPolicy

    async def load(model_id):
        return model_id

    cache = ModelCache(load, max_models=1, policy=TinyLFUPolicy())
    for _ in range(5):
        await cache.get("hot")
    await cache.get("cold")  # requested once: refused, "hot" stays
    assert cache.loaded_ids() == ("hot",)
    cache.admit("cold")
    await cache.get("cold")
    assert cache.loaded_ids() == ("cold",)


async def test_a_model_that_keeps_failing_backs_off():
    from modelplex._errors import ModelLoadBackoffError

    now = [0.0]
    calls = []

    async def load(model_id):
        calls.append(model_id)
        if len(calls) <= 3:
            raise RuntimeError("bucket unreachable")
        return model_id

    cache = ModelCache(load, clock=lambda: now[0])
    with pytest.raises(RuntimeError):
        await cache.get("m")
    with pytest.raises(RuntimeError):  # the first failure is retried at once
        await cache.get("m")
    with pytest.raises(ModelLoadBackoffError, match="'m' failed 2 times.*bucket unreachable"):
        await cache.get("m")  # within 0.5 s of the second failure: no loader call
    assert len(calls) == 2
    now[0] = 0.6
    with pytest.raises(RuntimeError):
        await cache.get("m")
    now[0] = 1.5  # the third failure backs off 1 s
    with pytest.raises(ModelLoadBackoffError):
        await cache.get("m")
    now[0] = 1.7
    assert await cache.get("m") == "m"
    assert len(calls) == 4
    assert await cache.get("m") == "m"


# ---------------------------------------------------------------- requests on their way


async def test_a_wanted_model_is_passed_over_for_eviction(make):
    wanted: set[str] = set()
    cache, loader = make(max_models=2, wanted=lambda: frozenset(wanted))
    await cache.get("1")
    await cache.get("2")
    wanted.add("1")  # a request for 1 reached the replica but has not asked for it yet
    await cache.get("3")
    assert cache.loaded_ids() == ("1", "3")  # 2 went, though 1 was less recently used
    await cache.wait_for_unloads()
    assert "del 2" in loader.events and "del 1" not in loader.events


async def test_wanted_models_still_go_when_nothing_else_can(make):
    cache, loader = make(max_models=2, wanted=lambda: frozenset({"1", "2", "3"}))
    for model_id in ["1", "2", "3"]:
        await cache.get(model_id)
    assert cache.loaded_ids() == ("2", "3")  # the limit holds: plain LRU among the wanted
    assert len(cache) == 2


async def test_wanted_applies_to_the_byte_budget_too(make):
    loader = Loader(sizes={"a": 40, "b": 40, "c": 40})
    cache, _ = make(
        loader=loader, max_models=-1, max_bytes=100, sizer=lambda m: m.size,
        wanted=lambda: frozenset({"a"}),
    )
    for model_id in ["a", "b", "c"]:
        await cache.get(model_id)
    assert cache.loaded_ids() == ("a", "c")


async def test_touch_makes_a_model_most_recently_used(make):
    cache, loader = make(max_models=2)
    await cache.get("1")
    await cache.get("2")
    cache.touch("1")  # requests for 1 wait at a router for this replica
    cache.touch("unknown")  # not loaded: nothing to do
    await cache.get("3")
    assert cache.loaded_ids() == ("1", "3")
