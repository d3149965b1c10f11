"""Replay a trace through replicas of model caches, driven by the real eviction policies.

Synchronous and pure: each request is routed (to a replica holding its model, else to the
model's rendezvous home, as ``_routing`` does for a cold model), then served by that replica's
cache, which asks a policy from ``modelplex._replica.eviction`` what to evict exactly as ``ModelCache``
does: ``record_access`` on every request, and for an admission policy the new model offered as
a candidate. Requests finish instantly, so a refused newcomer is unloaded at once.

    python -m bench.simulate
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence, cast

from modelplex._replica.eviction import AdmissionPolicy, EntryView, EvictionPolicy, policy_from_name
from modelplex._data.routing import rendezvous_order

from .reference import belady, global_lru, hit_rate, static_top_k
from .trace import make_trace

__all__ = ["ROUTINGS", "SimResult", "simulate"]

ROUTINGS = ("rendezvous",)


@dataclass(frozen=True)
class SimResult:
    hit_rate: float
    loads: int
    evictions: int  # refused newcomers included: each was loaded, then unloaded


class _Replica:
    """The decisions of one ``ModelCache`` with a count limit, without asyncio."""

    def __init__(self, policy: EvictionPolicy, slots: int) -> None:
        self.policy = policy
        self.slots = slots
        self.record = getattr(policy, "record_access", None)
        self.admission = bool(getattr(policy, "admission", False))
        self.entries: OrderedDict[str, EntryView] = OrderedDict()  # least to most recent
        self.loads = 0
        self.evictions = 0

    def request(self, model_id: str, now: float) -> None:
        if self.record is not None:
            self.record(model_id, now)
        old = self.entries.pop(model_id, None)
        hits = 1 if old is None else old.hits + 1
        self.entries[model_id] = EntryView(model_id, now, None, hits, 1.0, False)
        if old is not None:
            return
        self.loads += 1
        if len(self.entries) <= self.slots:
            return
        views = list(self.entries.values())
        if self.admission:
            victims = cast(AdmissionPolicy, self.policy).victims(
                views, max_models=self.slots, max_bytes=None, new=model_id
            )
        else:
            victims = self.policy.victims(
                views, max_models=self.slots, max_bytes=None, protect=frozenset((model_id,))
            )
            victims = [v for v in victims if v != model_id]
        for victim in victims:
            if self.entries.pop(victim, None) is not None:
                self.evictions += 1


def simulate(
    trace_ids: Sequence[str],
    replicas: int = 2,
    slots: int = 4,
    policy_name: str = "lru",
    routing: str = "rendezvous",
) -> SimResult:
    """Hit rate, loads and evictions of ``replicas`` caches of ``slots`` models each.

    Replica ids are "replica-0".. ; the rendezvous homes (hence the hit rate) depend on them.
    """
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"replicas must be an int >= 1, got {replicas!r}")
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ValueError(f"slots must be an int >= 1, got {slots!r}")
    if routing not in ROUTINGS:
        raise ValueError(f"unknown routing {routing!r}; known: {', '.join(map(repr, ROUTINGS))}")
    names = [f"replica-{i}" for i in range(replicas)]
    caches = {name: _Replica(policy_from_name(policy_name), slots) for name in names}
    homes: dict[str, list[str]] = {}
    for i, model_id in enumerate(trace_ids):
        order = homes.get(model_id)
        if order is None:
            order = homes[model_id] = rendezvous_order(model_id, names)
        target = next((n for n in order if model_id in caches[n].entries), order[0])
        caches[target].request(model_id, float(i))
    loads = sum(c.loads for c in caches.values())
    evictions = sum(c.evictions for c in caches.values())
    return SimResult(hit_rate(loads, len(trace_ids)), loads, evictions)


def main() -> None:
    trace = make_trace()
    replicas, slots = 2, 4
    capacity = replicas * slots
    ids = trace.model_ids
    print(
        f"trace {trace.digest()}: {trace.num_requests} requests, {trace.num_models} models, "
        f"Zipf s={trace.s}, seed={trace.seed}; capacity {replicas}x{slots} = {capacity}"
    )
    n = len(ids)
    rows = [
        ("global LRU, one cache", global_lru(ids, capacity)),
        ("Belady MIN, demand", belady(ids, capacity, bypass=False)),
        ("Belady MIN, with bypass", belady(ids, capacity)),
        ("static top-K oracle", static_top_k(ids, capacity)),
    ]
    for name in ("lru", "tinylfu"):
        result = simulate(ids, replicas, slots, policy_name=name)
        rows.append((f"{name}, {replicas}x{slots} rendezvous", result.hit_rate))
    print(f"{'policy':<28} {'hit rate':>8} {'loads':>6}")
    for label, rate in rows:
        print(f"{label:<28} {rate:>8.4f} {round((1 - rate) * n):>6}")

if __name__ == "__main__":
    main()
