"""The router's own costs, without processes: ``python -m bench.router``.

Replicas are scripted over the in-memory transport, so the figures are the router's alone:

- a drain with 5,000 requests queued behind busy replicas (50 models), when nothing is free
  and when one slot frees;
- the memory the router keeps after 100,000 distinct model ids went through it (two replicas
  that keep 4 models each), traced with ``tracemalloc``.
"""

from __future__ import annotations

import asyncio
import pickle
import statistics
import time
import tracemalloc

from modelplex._data.memory import MemoryNetwork
from modelplex._messages import Call, DeploymentID, ModelsUpdate, ReplicaInfo, ReplicaSet, Result
from modelplex._data.router import Router

DEPLOYMENT = DeploymentID("bench", "router")


class _Directory:
    def __init__(self, replica_set: ReplicaSet) -> None:
        self._set = replica_set

    def report(self, report) -> None:
        pass

    async def watch(self, deployment_id, known_version):
        if known_version != self._set.version:
            return self._set
        await asyncio.Event().wait()


class _Replica:
    """Answers when released; reports the last ``capacity`` models it served as loaded."""

    def __init__(self, net: MemoryNetwork, name: str, port: int, max_ongoing: int,
                 capacity: int = 4, hold: bool = True) -> None:
        self.name = name
        self.info = ReplicaInfo(name, ("memory", port), max_ongoing)
        self.capacity = capacity
        self.hold = hold
        self.held: list[tuple[object, Call]] = []
        self.loaded: dict[str, float] = {}
        self.version = 0
        net.listen(self.info.address, self.handle)

    async def handle(self, channel) -> None:
        channel.send_nowait(ModelsUpdate(self.name, 0, {}, (), True))
        while True:
            message = await channel.recv()
            if isinstance(message, Call):
                if self.hold:
                    self.held.append((channel, message))
                else:
                    self.answer(channel, message)

    def answer(self, channel, call: Call) -> None:
        if call.model_id and call.model_id not in self.loaded:
            self.loaded[call.model_id] = 0.01
            while len(self.loaded) > self.capacity:
                self.loaded.pop(next(iter(self.loaded)))
            self.version += 1
            channel.send_nowait(ModelsUpdate(self.name, self.version, dict(self.loaded), (), True))
        channel.send_nowait(Result(call.request_id, True, pickle.dumps(self.name)))


async def _settle(turns: int = 50) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


async def drain_cost(queued: int = 5000, models: int = 50, replicas: int = 2) -> dict:
    net = MemoryNetwork()
    fakes = [_Replica(net, f"r{i}", i + 1, max_ongoing=1) for i in range(replicas)]
    router = Router(DEPLOYMENT, _Directory(ReplicaSet(DEPLOYMENT, 1, tuple(f.info for f in fakes))),
                    net.dial)
    await router.wait_ready(5)
    calls = [asyncio.ensure_future(router.call("__call__", model_id=f"m{i % models}"))
             for i in range(queued + replicas)]
    await _settle()
    busy = []
    for _ in range(20):
        start = time.perf_counter()
        router._placement.drain()
        busy.append(time.perf_counter() - start)
    freed = []
    view = router._registry.get("r0")
    for _ in range(20):  # one slot frees: time the drain that places the next request there
        view.release("", False)
        start = time.perf_counter()
        router._placement.drain()
        freed.append(time.perf_counter() - start)
        assert view.saturated
    for call in calls:
        call.cancel()
    await router.close()
    await net.close()
    return {
        "queued": queued,
        "drain_nothing_free_ms": round(statistics.median(busy) * 1e3, 4),
        "drain_after_a_slot_frees_ms": round(statistics.median(freed) * 1e3, 4),
    }


async def memory_after_ids(count: int = 100_000, batch: int = 500) -> dict:
    net = MemoryNetwork()
    fakes = [_Replica(net, f"r{i}", i + 1, max_ongoing=64, hold=False) for i in range(2)]
    router = Router(DEPLOYMENT, _Directory(ReplicaSet(DEPLOYMENT, 1, tuple(f.info for f in fakes))),
                    net.dial)
    await router.wait_ready(5)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for first in range(0, count, batch):
        await asyncio.gather(*(router.call("__call__", model_id=f"id-{i}")
                               for i in range(first, first + batch)))
    await _settle()
    after = tracemalloc.take_snapshot()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    tracemalloc.stop()
    sizes = router.sizes()
    await router.close()
    await net.close()
    return {"ids": count, "traced_growth_kb": round(grown / 1024, 1), **sizes}


def main() -> None:
    print(asyncio.run(drain_cost()))
    print(asyncio.run(memory_after_ids()))


if __name__ == "__main__":
    main()
