"""``@serve.batch``: the decorator on a loop (the pure queues: ``replica/test_batching.py``)."""

from __future__ import annotations

import asyncio

import pytest

import modelplex as serve
from modelplex import _context


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"max_batch_size": 0}, ValueError, "max_batch_size must be an integer >= 1, got 0"),
        ({"max_batch_size": 2.5}, TypeError, "max_batch_size"),
        ({"max_batch_size": True}, TypeError, "max_batch_size"),
        ({"batch_wait_timeout_s": -1}, ValueError, "batch_wait_timeout_s"),
        ({"batch_wait_timeout_s": "0.1"}, TypeError, "batch_wait_timeout_s"),
        ({"batch_wait_timeout_s": float("nan")}, ValueError, "nan"),
        ({"max_concurrent_batches": 0}, ValueError, "max_concurrent_batches"),
        ({"max_concurrent_batches": 1.0}, TypeError, "max_concurrent_batches"),
        ({"batch_size_fn": 3}, TypeError, "batch_size_fn"),
    ],
)
def test_arguments_are_validated(kwargs, error, text):
    with pytest.raises(error, match=text):
        serve.batch(**kwargs)


def test_validation_of_targets_and_live_setters():
    with pytest.raises(TypeError, match="functions or methods"):
        serve.batch(3)
    assert serve.batch(max_batch_size=8.0)(_double)._get_max_batch_size() == 8

    @serve.batch
    async def f(items):
        return items

    assert (f._get_max_batch_size(), f._get_batch_wait_timeout_s()) == (10, 0.01)
    with pytest.raises(ValueError, match="got -1"):
        f.set_max_batch_size(-1)


async def _double(items):
    return [2 * i for i in items]


# ---- the decorator on an event loop ----------------------------------------------------------


def in_request(model_id: str, coro):
    """Run ``coro`` as a request for ``model_id`` would (its own context)."""

    async def run():
        _context.set_request(_context.RequestContext(model_id=model_id))
        return await coro

    return asyncio.ensure_future(run())


class Embedder:
    def __init__(self, fail_on=None):
        self.batches: list[tuple[str, list]] = []
        self.fail_on = fail_on

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.005)
    async def embed(self, texts):
        model_id = serve.get_multiplexed_model_id()
        self.batches.append((model_id, list(texts)))
        await asyncio.sleep(0)
        if self.fail_on in texts:
            raise RuntimeError(f"bad input {self.fail_on}")
        return [f"{model_id}:{t}" for t in texts]


def test_concurrent_calls_share_a_batch_per_model_and_see_its_id():
    async def main():
        owner = Embedder()
        calls = [in_request(m, owner.embed(f"t{i}")) for i, m in enumerate("aabba")]
        results = await asyncio.gather(*calls)
        return owner.batches, results

    batches, results = asyncio.run(main())
    assert results == ["a:t0", "a:t1", "b:t2", "b:t3", "a:t4"]
    assert sorted(batches) == [("a", ["t0", "t1", "t4"]), ("b", ["t2", "t3"])]


def test_errors_reach_every_caller_of_the_batch_only():
    async def main():
        owner = Embedder(fail_on="x")
        bad = [in_request("a", owner.embed(t)) for t in ("ok", "x")]
        good = in_request("b", owner.embed("fine"))
        return await asyncio.gather(*bad, good, return_exceptions=True)

    first, second, good = asyncio.run(main())
    assert isinstance(first, RuntimeError) and isinstance(second, RuntimeError)
    assert str(first) == "bad input x"
    assert good == "b:fine"


def test_a_wrong_number_of_results_is_a_clear_error_to_each_caller():
    @serve.batch(batch_wait_timeout_s=0.001)
    async def short(items):
        return items[:1]

    async def main():
        return await asyncio.gather(*(short(i) for i in range(3)), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, TypeError) for r in results)
    assert "returned 1 results for a batch of 3 calls" in str(results[0])


def test_a_cold_model_does_not_hold_up_a_warm_one():
    class Model:
        def __init__(self):
            self.cold_loaded: asyncio.Event | None = None
            self.order: list[str] = []

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)
        async def run(self, items):
            model_id = serve.get_multiplexed_model_id()
            if model_id == "cold":
                await self.cold_loaded.wait()  # a long load
            self.order.append(model_id)
            return items

    async def main():
        owner = Model()
        owner.cold_loaded = asyncio.Event()
        cold = in_request("cold", owner.run(1))
        await asyncio.sleep(0.001)
        warm = [in_request("warm", owner.run(i)) for i in range(3)]
        await asyncio.wait_for(asyncio.gather(*warm), 1.0)  # would hang behind "cold" in Ray
        owner.cold_loaded.set()
        await cold
        return owner.order

    assert asyncio.run(main()) == ["warm", "cold"]


def test_live_resizing_and_argument_stacking():
    sizes: list[int] = []

    @serve.batch(max_batch_size=2, batch_wait_timeout_s=0.001)
    async def add(xs, ys, *, scale):
        sizes.append(len(xs))
        return [(x + y) * s for x, y, s in zip(xs, ys, scale)]

    async def main():
        first = await asyncio.gather(*(add(i, 1, scale=2) for i in range(4)))
        add.set_max_batch_size(4)
        second = await asyncio.gather(*(add(i, 0, scale=1) for i in range(4)))
        with pytest.raises(TypeError):
            await add(1)  # does not fit the signature: fails alone, at once
        return first, second

    first, second = asyncio.run(main())
    assert first == [2, 4, 6, 8] and second == [0, 1, 2, 3]
    assert sizes == [2, 2, 4]


def test_a_shorter_wait_set_live_wakes_a_waiting_batch():
    @serve.batch(max_batch_size=100, batch_wait_timeout_s=60.0)
    async def echo(items):
        return items

    async def main():
        pending = asyncio.ensure_future(echo("x"))
        await asyncio.sleep(0.01)
        echo.set_batch_wait_timeout_s(0.0)
        return await asyncio.wait_for(pending, 1.0)

    assert asyncio.run(main()) == "x"


def test_sync_functions_generators_and_cancelled_callers():
    @serve.batch(batch_wait_timeout_s=0.001)
    def shout(items):  # sync: runs in a thread, still sees the batch's model id
        return [f"{serve.get_multiplexed_model_id()}:{i.upper()}" for i in items]

    @serve.batch(batch_wait_timeout_s=0.001)
    async def count_up(limits):
        for step in range(3):
            yield [step if step < n else StopIteration for n in limits]

    seen: list[list] = []

    @serve.batch(max_batch_size=10, batch_wait_timeout_s=0.02)
    async def record(items):
        seen.append(list(items))
        return items

    async def main():
        loud = await asyncio.gather(in_request("m", shout("a")), in_request("m", shout("b")))

        async def collect(n):
            return [v async for v in count_up(n)]

        streams = await asyncio.gather(collect(1), collect(3))
        gone = asyncio.ensure_future(record("gone"))
        kept = asyncio.ensure_future(record("kept"))
        await asyncio.sleep(0.005)
        gone.cancel()
        return loud, streams, await kept

    loud, streams, kept = asyncio.run(main())
    assert loud == ["m:A", "m:B"]
    assert streams == [[0], [0, 1, 2]]
    assert kept == "kept" and seen == [["kept"]]
