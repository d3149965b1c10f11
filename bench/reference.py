"""Reference hit rates for one cache of ``capacity`` models over a whole trace.

These bound what a multiplexed deployment can reach: ``belady`` is the offline optimum for
a single cache, ``static_top_k`` an oracle that knows the trace's most frequent ids, and
``global_lru`` the plain online baseline. Hit rate = 1 - loads / requests throughout.
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict
from typing import Sequence

__all__ = ["belady", "global_lru", "hit_rate", "static_top_k"]


def _check_capacity(capacity: int) -> None:
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")


def hit_rate(loads: int, requests: int) -> float:
    """1 - loads/requests; 0.0 for an empty trace (nothing was served from cache)."""
    return 1.0 - loads / requests if requests else 0.0


def global_lru(ids: Sequence[str], capacity: int) -> float:
    """One LRU cache of ``capacity`` models."""
    _check_capacity(capacity)
    cache: OrderedDict[str, None] = OrderedDict()
    loads = 0
    for model_id in ids:
        if model_id in cache:
            cache.move_to_end(model_id)
            continue
        loads += 1
        cache[model_id] = None
        if len(cache) > capacity:
            cache.popitem(last=False)
    return hit_rate(loads, len(ids))


def belady(ids: Sequence[str], capacity: int, *, bypass: bool = True) -> float:
    """Belady's MIN: on a miss with a full cache, evict the id whose next use is farthest.

    With ``bypass`` (the default) the id just loaded is a candidate too, as in ``ModelCache``
    with an admission policy: it is served, then dropped if it is needed last. That is the
    optimum for every policy here (``static_top_k`` and admission both bypass); without it,
    plain demand MIN, the optimum only for policies that always keep the new id.

    O(n log n): next-use indices are precomputed backwards, and a max-heap keyed by next use
    holds the cached ids; stale heap entries (an id since re-used or evicted) are skipped.
    """
    _check_capacity(capacity)
    n = len(ids)
    never = n  # "not used again" sorts after every real index
    next_use = [never] * n
    seen: dict[str, int] = {}
    for i in range(n - 1, -1, -1):
        next_use[i] = seen.get(ids[i], never)
        seen[ids[i]] = i
    cached: dict[str, int] = {}  # id -> its current next use
    heap: list[tuple[int, str]] = []  # (-next use, id)
    loads = 0
    for i, model_id in enumerate(ids):
        if model_id not in cached:
            loads += 1
            if len(cached) >= capacity:
                while -heap[0][0] != cached.get(heap[0][1]):
                    heapq.heappop(heap)  # stale
                if bypass and next_use[i] >= -heap[0][0]:
                    continue  # the newcomer is needed last (ties: keep the cache as it is)
                _, victim = heapq.heappop(heap)
                del cached[victim]
        cached[model_id] = next_use[i]
        heapq.heappush(heap, (-next_use[i], model_id))
    return hit_rate(loads, n)


def static_top_k(ids: Sequence[str], capacity: int) -> float:
    """The ``capacity`` most frequent ids of the whole trace, loaded once and kept forever.

    Each top id costs one load (its first request); every request for any other id is a
    load. Frequency ties go to the id requested first, so the result is deterministic.
    """
    _check_capacity(capacity)
    counts = Counter(ids)  # insertion order = first request order; most_common is stable
    top = {model_id for model_id, _ in counts.most_common(capacity)}
    loads = len(top) + sum(1 for model_id in ids if model_id not in top)
    return hit_rate(loads, len(ids))
