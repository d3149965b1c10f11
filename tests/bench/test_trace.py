"""The benchmark trace, the reference hit rates and the cache simulator: pure and seeded."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import FrozenInstanceError

import pytest

from bench import simulate as simulate_module
from bench.reference import belady, global_lru, hit_rate, static_top_k
from bench.simulate import SimResult, simulate
from bench.trace import Trace, make_trace, zipf_weights

DEFAULT_DIGEST = "ff08ae0fbff10b25"


# ---- trace ------------------------------------------------------------------------------------


def test_default_trace_is_stable_across_runs():
    trace = make_trace()
    assert trace == make_trace()
    assert trace.digest() == DEFAULT_DIGEST
    assert (trace.num_models, trace.num_requests, trace.s, trace.seed) == (50, 2000, 1.1, 0)
    assert len(trace) == len(trace.model_ids) == 2000
    assert set(trace.model_ids) <= {str(i) for i in range(50)}


def test_trace_is_frozen():
    with pytest.raises(FrozenInstanceError):
        make_trace(num_requests=3).seed = 1  # type: ignore[misc]


def test_seed_changes_requests_and_digest():
    a, b = make_trace(seed=0), make_trace(seed=1)
    assert a.model_ids != b.model_ids and a.digest() != b.digest()


def test_digest_is_of_the_ids():
    assert Trace(("1", "2"), 2, 2, 1.0, 0).digest() == Trace(("1", "2"), 9, 9, 2.0, 5).digest()
    assert Trace(("1", "2"), 2, 2, 1.0, 0).digest() != Trace(("12",), 2, 1, 1.0, 0).digest()


def test_zipf_shape():
    counts = Counter(make_trace(num_requests=20000).model_ids).most_common()
    top, bottom = counts[0][1], counts[-1][1]
    assert top > 50 * bottom
    weights = zipf_weights(50, 1.1)
    expected_top = 20000 * weights[0] / sum(weights)
    assert abs(top - expected_top) < 0.05 * expected_top
    assert counts[0][0] != "0" or counts[1][0] != "1"  # ranks are shuffled, not id order


def test_uniform_when_s_is_zero():
    counts = Counter(make_trace(num_models=4, num_requests=4000, s=0).model_ids)
    assert set(counts) == {"0", "1", "2", "3"}
    assert max(counts.values()) < 1.15 * min(counts.values())


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"num_models": 0}, "num_models"),
        ({"num_requests": -1}, "-1"),
        ({"s": float("nan")}, "nan"),
        ({"s": -1.0}, "-1.0"),
        ({"seed": "x"}, "'x'"),
    ],
)
def test_trace_validation_names_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        make_trace(**kwargs)


# ---- reference hit rates: hand-checked --------------------------------------------------------


def test_lru_by_hand():
    # a b a c b, 2 slots: a b load, a hits, c evicts b, b evicts a: 4 loads.
    assert global_lru("abacb", 2) == pytest.approx(1 - 4 / 5)
    assert global_lru("abab", 2) == pytest.approx(0.5)
    assert global_lru("abcabc", 2) == 0.0


def test_belady_by_hand():
    # c evicts a (never used again) rather than b (used next): 3 loads.
    assert belady("abacb", 2, bypass=False) == pytest.approx(1 - 3 / 5)
    # Demand MIN: c evicts b (next use later than a's), then b reloads: 4 loads.
    assert belady("abcab", 2, bypass=False) == pytest.approx(1 - 4 / 5)
    # With bypass c, needed last (never), is dropped right after its request: 3 loads.
    assert belady("abcab", 2) == pytest.approx(1 - 3 / 5)
    assert belady("abacb", 2) == pytest.approx(1 - 3 / 5)
    assert belady("abcabc", 3) == belady("abcabc", 3, bypass=False) == pytest.approx(0.5)


def test_static_top_k_by_hand():
    # top-1 is a: one load for it, then every b and c is a load.
    assert static_top_k("aaabbc", 1) == pytest.approx(1 - 4 / 6)
    # Ties go to the id seen first.
    assert static_top_k("abab", 1) == pytest.approx(1 - 3 / 4)
    assert static_top_k("abab", 2) == pytest.approx(0.5)


def test_empty_trace_and_capacity_validation():
    for policy in (global_lru, belady, static_top_k):
        assert policy([], 3) == 0.0
        with pytest.raises(ValueError, match="capacity"):
            policy(["a"], 0)
    assert hit_rate(0, 0) == 0.0


def test_belady_beats_every_other_policy_on_random_traces():
    rng = random.Random(7)
    for _ in range(200):
        ids = [str(rng.randrange(6)) for _ in range(rng.randrange(1, 40))]
        capacity = rng.randrange(1, 5)
        best = belady(ids, capacity)
        demand = belady(ids, capacity, bypass=False)
        assert best >= demand >= global_lru(ids, capacity) - 1e-12
        assert best >= static_top_k(ids, capacity) - 1e-12
        for replicas in (1, 2):
            if capacity % replicas == 0:
                for name in ("lru", "tinylfu"):
                    sim = simulate(ids, replicas, capacity // replicas, policy_name=name)
                    assert best >= sim.hit_rate - 1e-12, (ids, capacity, replicas, name)


def test_reference_rates_of_the_default_trace():
    ids = make_trace().model_ids
    assert global_lru(ids, 8) == pytest.approx(0.5295)
    assert belady(ids, 8, bypass=False) == pytest.approx(0.7085)
    assert belady(ids, 8) == pytest.approx(0.721)
    assert static_top_k(ids, 8) == pytest.approx(0.654)


# ---- simulator --------------------------------------------------------------------------------


def test_one_replica_lru_by_hand():
    assert simulate("aab", 1, 1) == SimResult(pytest.approx(1 / 3), 2, 1)


def test_one_replica_tinylfu_refuses_then_admits():
    # b is refused (1 < 2, unloaded after its request), then admitted on a tie (2 = 2).
    assert simulate("aabb", 1, 1, policy_name="tinylfu") == SimResult(0.25, 3, 2)
    assert simulate("aabb", 1, 1, policy_name="lru") == SimResult(0.5, 2, 1)


def test_lru_on_one_replica_matches_global_lru():
    ids = make_trace(num_requests=500).model_ids
    assert simulate(ids, 1, 8).hit_rate == pytest.approx(global_lru(ids, 8))


def test_tinylfu_meets_its_target_on_the_default_trace():
    ids = make_trace().model_ids
    lru = simulate(ids, 2, 4, policy_name="lru")
    lfu = simulate(ids, 2, 4, policy_name="tinylfu")
    assert lru.hit_rate == pytest.approx(0.518)
    assert lfu.hit_rate >= 0.62
    assert lfu.loads < lru.loads


def test_simulate_validation_names_the_value():
    with pytest.raises(ValueError, match="'random'"):
        simulate("a", routing="random")
    with pytest.raises(ValueError, match="'nope'"):
        simulate("a", policy_name="nope")
    with pytest.raises(ValueError, match="0"):
        simulate("a", replicas=0)
    with pytest.raises(ValueError, match="slots"):
        simulate("a", slots=0)


def test_main_prints_the_table(capsys):
    simulate_module.main()
    out = capsys.readouterr().out
    assert DEFAULT_DIGEST in out
    for label in ("global LRU", "Belady", "top-K", "lru,", "tinylfu,"):
        assert label in out
