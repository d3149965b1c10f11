"""Eviction policy and model sizing: pure functions over plain views."""

from __future__ import annotations

from dataclasses import FrozenInstanceError

import numpy as np
import pytest

from modelplex._eviction import (
    EntryView,
    EvictionPolicy,
    LRUPolicy,
    default_model_size,
    policy_from_name,
)


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
