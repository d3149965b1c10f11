"""``@serve.batch``'s pure queue logic: time is an argument, no loop, no clock."""

from __future__ import annotations

import pytest

from modelplex._replica.batching import BatchQueues, BatchSettings


def settings(size: int = 3, wait: float = 0.01, concurrent: int = 1) -> BatchSettings:
    return BatchSettings(size, wait, concurrent)


def test_a_full_batch_leaves_at_once_a_partial_one_after_the_wait():
    queues = BatchQueues(settings(size=3, wait=0.01))
    for i in range(4):
        queues.put("a", i, now=0.0)
    [first] = queues.take(now=0.0)
    assert (first.key, first.items) == ("a", [0, 1, 2])
    assert queues.take(now=0.001) == []  # the slot is taken
    queues.done("a")
    assert queues.take(now=0.005) == []  # one item, waited 5 ms of 10
    assert queues.next_deadline() == pytest.approx(0.01)
    [second] = queues.take(now=0.01)
    assert second.items == [3]
    queues.done("a")
    assert queues.keys() == [] and queues.next_deadline() is None


def test_batches_never_mix_keys_and_each_key_has_its_own_slot():
    queues = BatchQueues(settings(size=4, wait=0.0))
    for i, key in enumerate("abab"):
        queues.put(key, i, now=0.0)
    batches = queues.take(now=0.0)
    assert [(b.key, b.items) for b in batches] == [("a", [0, 2]), ("b", [1, 3])]
    # "a" is busy (say a cold load); "b" finishes and its next batch leaves without waiting
    queues.put("a", 4, now=1.0)
    queues.put("b", 5, now=1.0)
    queues.done("b")
    assert [(b.key, b.items) for b in queues.take(now=1.0)] == [("b", [5])]
    assert queues.pending("a") == 1 and queues.in_flight("a") == 1


def test_calls_that_arrive_while_a_batch_runs_leave_together_when_it_ends():
    queues = BatchQueues(settings(size=8, wait=0.01))
    queues.put("m", 0, now=0.0)
    assert [b.items for b in queues.take(now=0.01)] == [[0]]
    for i in range(1, 6):
        queues.put("m", i, now=0.02 + i / 1000)
    assert queues.take(now=0.5) == [] and queues.next_deadline() is None  # no free slot
    queues.done("m")
    assert [b.items for b in queues.take(now=0.5)] == [[1, 2, 3, 4, 5]]


def test_max_concurrent_batches_counts_per_key():
    queues = BatchQueues(settings(size=1, wait=0.0, concurrent=2))
    for i in range(3):
        queues.put("a", i, now=0.0)
    queues.put("b", 9, now=0.0)
    assert sorted((b.key, b.items[0]) for b in queues.take(now=0.0)) == [
        ("a", 0), ("a", 1), ("b", 9)
    ]
    queues.done("a")
    assert [b.items for b in queues.take(now=0.0)] == [[2]]


def test_live_limits_apply_to_what_is_queued():
    limits = settings(size=10, wait=10.0)
    queues = BatchQueues(limits)
    for i in range(5):
        queues.put("a", i, now=0.0)
    assert queues.take(now=1.0) == []
    limits.set_max_batch_size(2)
    assert [b.items for b in queues.take(now=1.0)] == [[0, 1]]
    queues.done("a")
    limits.set_max_batch_size(10)
    limits.set_batch_wait_timeout_s(0.5)
    assert queues.next_deadline() == pytest.approx(0.5)
    assert [b.items for b in queues.take(now=1.0)] == [[2, 3, 4]]


def test_dead_items_are_dropped_and_a_size_function_fills_batches():
    cancelled = {1}
    queues = BatchQueues(settings(size=5, wait=0.0), alive=lambda i: i not in cancelled)
    for i in range(3):
        queues.put("a", i, now=0.0)
    assert [b.items for b in queues.take(now=0.0)] == [[0, 2]]

    tokens = BatchQueues(settings(size=10, wait=1.0), size_of=lambda items: sum(items))
    for n in (4, 5, 3, 20):
        tokens.put("a", n, now=0.0)
    assert [b.items for b in tokens.take(now=0.0)] == [[4, 5]]  # 4+5+3 > 10: full without 3
    tokens.done("a")
    assert [b.items for b in tokens.take(now=1.0)] == [[3]]  # 3+20 > 10
    tokens.done("a")
    assert [b.items for b in tokens.take(now=1.0)] == [[20]]  # too big for any batch: alone
