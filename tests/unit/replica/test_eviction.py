"""Eviction policy and model sizing: pure functions over plain views."""

from __future__ import annotations

from dataclasses import FrozenInstanceError

import numpy as np
import pytest

from modelplex._replica.eviction import (
    EntryView,
    EvictionPolicy,
    LRUPolicy,
    TinyLFUPolicy,
    default_model_size,
    policy_from_name,
)

from tests.fakes import FakeClock


def ev(model_id, last_used, size=None, pinned=False, hits=0, load_s=0.0):
    return EntryView(model_id, float(last_used), size, hits, load_s, pinned)


def victims(entries, max_models=-1, max_bytes=None, protect=frozenset()):
    return LRUPolicy().victims(entries, max_models=max_models, max_bytes=max_bytes, protect=protect)


# ---- EntryView --------------------------------------------------------------------------------


def test_entry_view_is_frozen():
    view = ev("a", 1)
    with pytest.raises(FrozenInstanceError):
        view.last_used = 2.0  # type: ignore[misc]


# ---- LRU by count -----------------------------------------------------------------------------


def test_within_limits_evicts_nothing():
    assert victims([ev("a", 1), ev("b", 2)], max_models=2) == []


def test_count_limit_evicts_least_recently_used_first():
    entries = [ev("c", 3), ev("a", 1), ev("d", 4), ev("b", 2)]
    assert victims(entries, max_models=2) == ["a", "b"]
    assert victims(entries, max_models=1) == ["a", "b", "c"]


def test_ties_keep_the_callers_order():
    entries = [ev("x", 5), ev("y", 5), ev("z", 5)]
    assert victims(entries, max_models=1) == ["x", "y"]


def test_unbounded_count_evicts_nothing():
    assert victims([ev(str(i), i) for i in range(100)], max_models=-1) == []


def test_empty():
    assert victims([], max_models=1, max_bytes=1) == []


# ---- LRU by bytes -----------------------------------------------------------------------------


def test_byte_limit_evicts_until_under_budget():
    entries = [ev("a", 1, 40), ev("b", 2, 40), ev("c", 3, 40)]
    assert victims(entries, max_bytes=100) == ["a"]
    assert victims(entries, max_bytes=40) == ["a", "b"]
    assert victims(entries, max_bytes=120) == []


def test_unknown_sizes_count_as_zero():
    entries = [ev("a", 1, None), ev("b", 2, 60), ev("c", 3, None)]
    assert victims(entries, max_bytes=60) == []


def test_byte_pressure_skips_entries_that_free_nothing():
    entries = [ev("a", 1, None), ev("b", 2, 0), ev("c", 3, 50), ev("d", 4, 60)]
    assert victims(entries, max_bytes=100) == ["c"]


def test_count_pressure_evicts_unknown_sizes_too():
    entries = [ev("a", 1, None), ev("b", 2, 50), ev("c", 3, 60)]
    # Over by count: "a" goes even though it frees no known bytes; then bytes need "b".
    assert victims(entries, max_models=2, max_bytes=100) == ["a", "b"]


def test_both_limits():
    entries = [ev("a", 1, 10), ev("b", 2, 10), ev("c", 3, 90)]
    assert victims(entries, max_models=3, max_bytes=95) == ["a", "b"]
    assert victims(entries, max_models=2, max_bytes=1000) == ["a"]


# ---- pinned and protected ---------------------------------------------------------------------


def test_never_returns_pinned_or_protected():
    entries = [ev("a", 1, pinned=True), ev("b", 2), ev("c", 3), ev("d", 4)]
    assert victims(entries, max_models=3, protect=frozenset({"b"})) == ["c"]
    assert victims(entries, max_models=2, protect=frozenset({"b"})) == ["c", "d"]


def test_returns_what_it_can_when_limits_cannot_be_met():
    entries = [ev("a", 1, 50, pinned=True), ev("b", 2, 50), ev("new", 3, 50)]
    out = victims(entries, max_models=1, max_bytes=10, protect=frozenset({"new"}))
    assert out == ["b"]


def test_everything_pinned():
    entries = [ev("a", 1, pinned=True), ev("b", 2, pinned=True)]
    assert victims(entries, max_models=1) == []


# ---- policies by name -------------------------------------------------------------------------


def test_policy_from_name():
    policy = policy_from_name("lru")
    assert isinstance(policy, LRUPolicy)
    assert policy.name == "lru"
    assert policy_from_name("lru") is not policy  # a fresh one each time


@pytest.mark.parametrize("name", ["lfu", "LRU", "", None])
def test_unknown_policy_name_is_named(name):
    with pytest.raises(ValueError) as info:
        policy_from_name(name)  # type: ignore[arg-type]
    assert repr(name) in str(info.value)
    assert "'lru'" in str(info.value)


def test_a_policy_is_anything_with_victims():
    class MostRecentFirst:
        name = "mru"

        def victims(self, entries, *, max_models, max_bytes, protect=frozenset()):
            ordered = sorted(entries, key=lambda e: -e.last_used)
            return [e.model_id for e in ordered if e.model_id not in protect][: len(entries) - max_models]

    policy: EvictionPolicy = MostRecentFirst()
    assert policy.victims([ev("a", 1), ev("b", 2)], max_models=1, max_bytes=None) == ["b"]


# ---- default_model_size -----------------------------------------------------------------------


class FakeTensor:
    def __init__(self, n, width):
        self.n, self.width = n, width

    def numel(self):
        return self.n

    def element_size(self):
        return self.width


class FakeModule:
    def __init__(self, params, buffers=()):
        self._params, self._buffers = params, buffers

    def parameters(self):
        return iter(self._params)

    def buffers(self):
        return iter(self._buffers)


def test_size_of_numpy_arrays():
    assert default_model_size(np.zeros((10, 10), dtype=np.float32)) == 400
    assert default_model_size(np.zeros(0)) == 0


def test_size_of_torch_like_module():
    module = FakeModule([FakeTensor(10, 4), FakeTensor(5, 2)], [FakeTensor(3, 8)])
    assert default_model_size(module) == 40 + 10 + 24
    assert default_model_size(FakeModule([])) == 0


def test_nbytes_of_numpy_integer_type():
    class Holder:
        nbytes = np.int64(123)

    assert default_model_size(Holder()) == 123


@pytest.mark.parametrize(
    "model", [object(), None, 42, "a string", {"nbytes": 5}, [1, 2, 3]], ids=repr
)
def test_unknown_things_have_no_size(model):
    assert default_model_size(model) is None


def test_bad_nbytes_values_are_ignored():
    class Weird:
        def __init__(self, nbytes):
            self.nbytes = nbytes

    for value in [True, -5, 1.5, "10", None]:
        assert default_model_size(Weird(value)) is None, value


def test_broken_attributes_mean_unknown_size():
    class BrokenNbytes:
        @property
        def nbytes(self):
            raise RuntimeError("boom")

    class BrokenParameters(FakeModule):
        def parameters(self):
            raise RuntimeError("boom")

    class BrokenTensor:
        def numel(self):
            raise ValueError("boom")

        def element_size(self):
            return 4

    class LyingTensor(FakeTensor):
        def numel(self):
            return "many"

    assert default_model_size(BrokenNbytes()) is None
    assert default_model_size(BrokenParameters([])) is None
    assert default_model_size(FakeModule([BrokenTensor()])) is None
    assert default_model_size(FakeModule([LyingTensor(1, 4)])) is None


def test_parameters_without_buffers_is_not_a_module():
    class OnlyParameters:
        def parameters(self):
            return iter([FakeTensor(1, 4)])

    assert default_model_size(OnlyParameters()) is None


# ---- TinyLFU ----------------------------------------------------------------------------------


def feed(policy, clock, *ids):
    for model_id in ids:
        policy.record_access(model_id, clock())


def lfu_victims(policy, entries, max_models=-1, max_bytes=None, protect=frozenset(), new=None):
    return policy.victims(
        entries, max_models=max_models, max_bytes=max_bytes, protect=protect, new=new
    )


def test_tinylfu_by_name():
    policy = policy_from_name("tinylfu")
    assert isinstance(policy, TinyLFUPolicy)
    assert policy.name == "tinylfu" and policy.admission is True
    assert policy_from_name("tinylfu") is not policy
    assert "'tinylfu'" in str(pytest.raises(ValueError, policy_from_name, "nope").value)


def test_tinylfu_counts_ids_that_are_not_cached():
    policy, clock = TinyLFUPolicy(), FakeClock(tick=1.0)
    feed(policy, clock, "a", "b", "a", "z")
    assert [policy.frequency(m) for m in "abzq"] == [2, 1, 1, 0]


def test_tinylfu_evicts_least_frequent_then_least_recent():
    policy, clock = TinyLFUPolicy(), FakeClock(tick=1.0)
    feed(policy, clock, "a", "a", "a", "b", "c", "d", "d")
    entries = [ev("a", 1), ev("c", 2), ev("b", 3), ev("d", 4)]
    assert lfu_victims(policy, entries, max_models=3) == ["c"]  # b, c tie at 1: c older
    assert lfu_victims(policy, entries, max_models=1) == ["c", "b", "d"]


def test_admission_refuses_a_newcomer_rarer_than_every_cached_model():
    policy, clock = TinyLFUPolicy(), FakeClock(tick=1.0)
    feed(policy, clock, *"aaabbb", "wonder")
    entries = [ev("a", 1), ev("b", 2), ev("wonder", 3)]
    assert lfu_victims(policy, entries, max_models=2, new="wonder") == ["wonder"]


def test_admission_lets_a_frequent_newcomer_displace_the_rarest():
    policy, clock = TinyLFUPolicy(), FakeClock(tick=1.0)
    feed(policy, clock, *"aaab", "c", "c")
    entries = [ev("a", 1), ev("b", 2), ev("c", 3)]
    assert lfu_victims(policy, entries, max_models=2, new="c") == ["b"]


def test_admission_ties_go_to_the_newcomer():
    policy, clock = TinyLFUPolicy(), FakeClock(tick=1.0)
    feed(policy, clock, "a", "b", "c")
    entries = [ev("a", 1), ev("b", 2), ev("c", 3)]
    # Equally cold models: behaves like LRU.
    assert lfu_victims(policy, entries, max_models=2, new="c") == ["a"]
    # Even with the newcomer's timestamp no newer than the rest.
    assert lfu_victims(policy, [ev("c", 1), ev("a", 1)], max_models=1, new="c") == ["a"]


def test_tinylfu_never_returns_pinned_or_protected():
    policy, clock = TinyLFUPolicy(), FakeClock(tick=1.0)
    feed(policy, clock, *"aaabbbcc", "n")
    entries = [ev("a", 1), ev("b", 2, pinned=True), ev("c", 3), ev("n", 4)]
    assert lfu_victims(policy, entries, max_models=2, protect=frozenset({"n"})) == ["c", "a"]
    assert lfu_victims(policy, entries, max_models=3, new="n") == ["n"]


def test_tinylfu_byte_budget_skips_entries_that_free_nothing():
    policy, clock = TinyLFUPolicy(), FakeClock(tick=1.0)
    feed(policy, clock, "a", *"bb", *"ccc")
    entries = [ev("a", 1, None), ev("b", 2, 50), ev("c", 3, 60)]
    assert lfu_victims(policy, entries, max_bytes=100) == ["b"]


def test_aging_halves_counts_and_forgets_one_offs():
    policy, clock = TinyLFUPolicy(sample_size=8), FakeClock(tick=1.0)
    feed(policy, clock, *"aaaaa", "b", "c")
    assert [policy.frequency(m) for m in "abc"] == [5, 1, 1]
    feed(policy, clock, "b")  # the 8th access: halve
    assert [policy.frequency(m) for m in "abc"] == [2, 1, 0]
    assert policy.tracked_ids == 2


def test_aging_follows_shifting_popularity():
    entries = [ev("a", 1), ev("b", 2), ev("x", 3)]
    policy, clock = TinyLFUPolicy(sample_size=10), FakeClock(tick=1.0)
    feed(policy, clock, *"a" * 10)  # a was hot (halved: 5)...
    feed(policy, clock, *"b" * 10)  # ...then b (halved: a 2, b 5)...
    feed(policy, clock, *"xxx")  # ...now x
    assert [policy.frequency(m) for m in "abx"] == [2, 5, 3]
    assert lfu_victims(policy, entries, max_models=2, new="x") == ["a"]
    # Without aging, a's old popularity would keep x out.
    stale, clock = TinyLFUPolicy(sample_size=1000), FakeClock(tick=1.0)
    feed(stale, clock, *"a" * 10, *"b" * 10, *"xxx")
    assert lfu_victims(stale, entries, max_models=2, new="x") == ["x"]


def test_aging_keeps_memory_bounded():
    policy, clock = TinyLFUPolicy(sample_size=50), FakeClock(tick=1.0)
    feed(policy, clock, *(f"one-off-{i}" for i in range(1000)))
    assert policy.tracked_ids <= 100


def test_default_sample_size_follows_the_cache_limit():
    policy = TinyLFUPolicy()
    assert policy.sample_size == TinyLFUPolicy.INITIAL_SAMPLE_SIZE
    lfu_victims(policy, [ev("a", 1), ev("b", 2), ev("c", 3)], max_models=2)
    assert policy.sample_size == 2 * TinyLFUPolicy.PER_SLOT
    # Only a byte budget: the number of models kept.
    lfu_victims(policy, [ev("a", 1, 50), ev("b", 2, 50), ev("c", 3, 50)], max_bytes=100)
    assert policy.sample_size == 2 * TinyLFUPolicy.PER_SLOT
    assert TinyLFUPolicy(sample_size=7).sample_size == 7


def test_window_protects_the_most_recent_models():
    policy, clock = TinyLFUPolicy(window=1), FakeClock(tick=1.0)
    feed(policy, clock, *"aaabb", "n")
    entries = [ev("a", 1), ev("b", 2), ev("n", 3)]
    assert lfu_victims(policy, entries, max_models=2, new="n") == ["b"]


def test_tinylfu_is_deterministic():
    def run():
        policy, clock = TinyLFUPolicy(sample_size=5), FakeClock(tick=1.0)
        feed(policy, clock, *"abcabcaabdd")  # halved twice: a 1, b 1, c 0, d 1
        return lfu_victims(policy, [ev(m, i) for i, m in enumerate("abcd")], max_models=1)

    assert run() == run() == ["c", "a", "b"]


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"sample_size": 0}, "0"),
        ({"sample_size": True}, "True"),
        ({"sample_size": 2.5}, "2.5"),
        ({"window": -1}, "-1"),
        ({"window": "1"}, "'1'"),
    ],
)
def test_tinylfu_validation_names_the_value(kwargs, needle):
    with pytest.raises(ValueError) as info:
        TinyLFUPolicy(**kwargs)
    assert next(iter(kwargs)) in str(info.value) and needle in str(info.value)
