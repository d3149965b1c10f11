"""Replica choice policy: every rule and tie-break, with scripted replica views."""

from __future__ import annotations

import collections
import hashlib
import math
import random
from dataclasses import FrozenInstanceError, dataclass, field

import pytest

from modelplex._data.routing import (
    Choice,
    Reason,
    ReplicaState,
    SpillMeter,
    choose_replica,
    rendezvous_order,
)

M = "llama-7b"


def rs(rid, ongoing=0, max_ongoing=5, loaded=(), loading=(), room=True):
    return ReplicaState(rid, ongoing, max_ongoing, frozenset(loaded), frozenset(loading), room)


def choose(replicas, model_id=M, seed=0, **kw):
    return choose_replica(replicas, model_id, rng=random.Random(seed), **kw)


def home(model_id, ids):
    return rendezvous_order(model_id, ids)[0]


def model_with_order(ids, prefix="m"):
    """A model id whose rendezvous order over ``ids`` is exactly ``ids``."""
    for i in range(100_000):
        m = f"{prefix}{i}"
        if rendezvous_order(m, ids) == list(ids):
            return m
    raise AssertionError("no such model id")


# ---------------------------------------------------------------- ReplicaState


def test_replica_state_properties():
    r = rs("a", ongoing=4, max_ongoing=5, loaded={"x"}, loading={"y"})
    assert not r.saturated
    assert r.holds("x") and r.holds("y") and not r.holds("z")
    assert rs("a", ongoing=5).saturated
    assert rs("a", ongoing=6).saturated
    with pytest.raises(FrozenInstanceError):
        r.ongoing = 1  # type: ignore[misc]
    assert ReplicaState("a", 0, 1).has_model_room is True


# ---------------------------------------------------------------- rule 1


def test_no_replicas():
    assert choose([]) == Choice(None, Reason.NO_REPLICAS)
    assert choose([], "") == Choice(None, Reason.NO_REPLICAS)


# ---------------------------------------------------------------- rule 2: no model id


def test_any_single_free_replica():
    reps = [rs("a", ongoing=5), rs("b", ongoing=3), rs("c", ongoing=5)]
    assert choose(reps, "") == Choice("b", Reason.ANY)


def test_any_all_saturated_waits_busy():
    reps = [rs("a", ongoing=5), rs("b", ongoing=7)]
    assert choose(reps, "") == Choice(None, Reason.WAIT_BUSY)


def test_any_power_of_two_takes_less_loaded_of_two_samples():
    reps = [rs("a", ongoing=0), rs("b", ongoing=1), rs("c", ongoing=2), rs("d", ongoing=5)]
    free = reps[:3]
    for seed in range(50):
        a, b = random.Random(seed).sample(free, 2)
        expected = b if b.ongoing < a.ongoing else a
        assert choose(reps, "", seed=seed) == Choice(expected.replica_id, Reason.ANY)
    # "c" (the busiest free one) can never win a pairwise comparison; "d" is saturated.
    picks = {choose(reps, "", seed=s).replica_id for s in range(200)}
    assert picks == {"a", "b"}


def test_any_tie_goes_to_first_sampled():
    reps = [rs("a", ongoing=1), rs("b", ongoing=1), rs("c", ongoing=1)]
    for seed in range(30):
        first, _ = random.Random(seed).sample(reps, 2)
        assert choose(reps, "", seed=seed).replica_id == first.replica_id


def test_any_is_deterministic_for_a_seed():
    reps = [rs(f"r{i}", ongoing=i % 3) for i in range(6)]
    rng1, rng2 = random.Random(42), random.Random(42)
    seq1 = [choose_replica(reps, "", rng=rng1).replica_id for _ in range(30)]
    seq2 = [choose_replica(reps, "", rng=rng2).replica_id for _ in range(30)]
    assert seq1 == seq2
    assert len(set(seq1)) > 1  # it does use the rng, not a fixed pick


def test_any_ignores_model_state():
    reps = [rs("a", ongoing=0, loaded={M}), rs("b", ongoing=0, loading={"x"}, room=False)]
    assert choose(reps, "").reason is Reason.ANY


# ---------------------------------------------------------------- rule 3: holders


def test_holder_least_ongoing_wins():
    reps = [rs("a", ongoing=3, loaded={M}), rs("b", ongoing=1, loaded={M}), rs("c", ongoing=0)]
    assert choose(reps) == Choice("b", Reason.HOLDER)


def test_holder_can_be_loading_only():
    reps = [rs("a", ongoing=0), rs("b", ongoing=2, loading={M})]
    assert choose(reps) == Choice("b", Reason.HOLDER)


def test_holder_less_ongoing_beats_loaded():
    reps = [rs("a", ongoing=2, loaded={M}), rs("b", ongoing=1, loading={M})]
    assert choose(reps) == Choice("b", Reason.HOLDER)


def test_holder_tie_prefers_loaded_over_loading():
    for first, second in (("a", "b"), ("b", "a")):
        m = model_with_order([first, second])
        # The rendezvous favourite is only loading: loaded still wins the tie.
        reps = [rs(first, ongoing=1, loading={m}), rs(second, ongoing=1, loaded={m})]
        assert choose(reps, m) == Choice(second, Reason.HOLDER)


def test_holder_tie_then_rendezvous_order():
    ids = ["a", "b", "c"]
    for m in ("x1", "x2", "x3", "x4", "x5"):
        reps = [rs(i, ongoing=2, loaded={m}) for i in ids]
        assert choose(reps, m) == Choice(home(m, ids), Reason.HOLDER)
        assert choose(list(reversed(reps)), m) == Choice(home(m, ids), Reason.HOLDER)


def test_saturated_holder_skipped_for_free_holder():
    reps = [rs("a", ongoing=5, loaded={M}), rs("b", ongoing=4, loaded={M})]
    assert choose(reps) == Choice("b", Reason.HOLDER)


def test_holder_beats_idle_non_holder():
    reps = [rs("a", ongoing=0), rs("b", ongoing=4, loaded={M})]
    assert choose(reps, wait_debt_s=100.0) == Choice("b", Reason.HOLDER)


# ---------------------------------------------------------------- rule 4: holders saturated


def test_wait_loading_when_a_saturated_holder_is_still_loading():
    reps = [rs("a", ongoing=5, loading={M}), rs("b", ongoing=0)]
    assert choose(reps, wait_debt_s=1e9, load_cost_s=0.0) == Choice(None, Reason.WAIT_LOADING)


def test_wait_loading_even_if_another_holder_has_it_loaded():
    reps = [rs("a", ongoing=5, loaded={M}), rs("b", ongoing=5, loading={M}), rs("c")]
    assert choose(reps, wait_debt_s=1e9) == Choice(None, Reason.WAIT_LOADING)


def test_loaded_and_loading_on_same_replica_counts_as_loaded():
    reps = [rs("a", ongoing=5, loaded={M}, loading={M}), rs("b")]
    assert choose(reps, wait_debt_s=5.0, load_cost_s=1.0) == Choice("b", Reason.SPILL)


def test_max_replicas_per_model_caps_spill():
    reps = [rs("a", ongoing=5, loaded={M}), rs("b", ongoing=5, loaded={M}), rs("c")]
    assert choose(reps, wait_debt_s=10.0, max_replicas_per_model=2) == Choice(
        None, Reason.WAIT_SATURATED
    )
    assert choose(reps, wait_debt_s=10.0, max_replicas_per_model=3) == Choice("c", Reason.SPILL)
    assert choose(reps, wait_debt_s=10.0) == Choice("c", Reason.SPILL)


def test_rent_or_buy_threshold():
    reps = [rs("a", ongoing=5, loaded={M}), rs("b")]
    assert choose(reps, wait_debt_s=0.0) == Choice(None, Reason.WAIT_SATURATED)
    assert choose(reps, wait_debt_s=1.9, load_cost_s=2.0) == Choice(None, Reason.WAIT_SATURATED)
    assert choose(reps, wait_debt_s=2.0, load_cost_s=2.0) == Choice("b", Reason.SPILL)
    assert choose(reps, wait_debt_s=0.0, load_cost_s=0.0) == Choice("b", Reason.SPILL)


def test_spill_prefers_room_then_rendezvous():
    ids = ["b", "c", "d"]
    m = model_with_order(ids)
    base = [rs("a", ongoing=5, loaded={m})]
    reps = base + [rs("b"), rs("c"), rs("d")]
    assert choose(reps, m, wait_debt_s=1.0) == Choice("b", Reason.SPILL)
    reps = base + [rs("b", room=False), rs("c"), rs("d")]
    assert choose(reps, m, wait_debt_s=1.0) == Choice("c", Reason.SPILL)
    # Nobody has room: fall back to rendezvous order among all free non-holders.
    reps = base + [rs("b", room=False), rs("c", room=False), rs("d", room=False)]
    assert choose(reps, m, wait_debt_s=1.0) == Choice("b", Reason.SPILL)
    # Saturated non-holders are never spill targets.
    reps = base + [rs("b", ongoing=5), rs("c", room=False), rs("d", ongoing=9)]
    assert choose(reps, m, wait_debt_s=1.0) == Choice("c", Reason.SPILL)


def test_spill_target_is_rendezvous_not_least_loaded():
    # Rendezvous, not ongoing, picks the spill target: all routers agree on it.
    ids = ["b", "c"]
    m = model_with_order(ids)
    reps = [rs("a", ongoing=5, loaded={m}), rs("b", ongoing=4), rs("c", ongoing=0)]
    assert choose(reps, m, wait_debt_s=1.0) == Choice("b", Reason.SPILL)


def test_spill_with_no_free_non_holder_waits_saturated():
    reps = [rs("a", ongoing=5, loaded={M}), rs("b", ongoing=5)]
    assert choose(reps, wait_debt_s=10.0) == Choice(None, Reason.WAIT_SATURATED)
    assert choose(reps[:1], wait_debt_s=10.0) == Choice(None, Reason.WAIT_SATURATED)


# ---------------------------------------------------------------- rule 5: cold model


def test_cold_goes_to_rendezvous_home():
    ids = ["a", "b", "c", "d"]
    for m in ("m1", "m2", "m3", "m4", "m5", "m6"):
        reps = [rs(i, loaded={"other"}) for i in ids]
        assert choose(reps, m) == Choice(home(m, ids), Reason.COLD)


def test_cold_prefers_room_then_skips_saturated():
    ids = ["a", "b", "c"]
    m = model_with_order(ids)
    assert choose([rs("a"), rs("b"), rs("c")], m) == Choice("a", Reason.COLD)
    assert choose([rs("a", room=False), rs("b"), rs("c")], m) == Choice("b", Reason.COLD)
    assert choose([rs("a", ongoing=5), rs("b", room=False), rs("c")], m) == Choice(
        "c", Reason.COLD
    )
    assert choose([rs("a", room=False), rs("b", room=False), rs("c", ongoing=5)], m) == Choice(
        "a", Reason.COLD
    )


def test_cold_ignores_ongoing_among_free():
    ids = ["a", "b"]
    m = model_with_order(ids)
    assert choose([rs("a", ongoing=4), rs("b", ongoing=0)], m) == Choice("a", Reason.COLD)


def test_cold_all_saturated_waits_busy():
    reps = [rs("a", ongoing=5), rs("b", ongoing=5)]
    assert choose(reps, wait_debt_s=1e9) == Choice(None, Reason.WAIT_BUSY)


# ---------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"load_cost_s": -1.0}, "load_cost_s"),
        ({"load_cost_s": math.nan}, "load_cost_s"),
        ({"wait_debt_s": math.nan}, "wait_debt_s"),
        ({"max_replicas_per_model": 0}, "max_replicas_per_model"),
    ],
)
def test_bad_arguments(kw, name):
    with pytest.raises(ValueError, match=name):
        choose([rs("a")], **kw)


# ---------------------------------------------------------------- rendezvous hashing


def test_rendezvous_hard_coded_orders():
    # Computed once; these must never change or routers of different versions would disagree.
    ids = ["r0", "r1", "r2", "r3"]
    assert rendezvous_order("llama-7b", ids) == ["r0", "r2", "r1", "r3"]
    assert rendezvous_order("resnet50", ids) == ["r1", "r2", "r0", "r3"]
    assert rendezvous_order("m1", ids) == ["r3", "r1", "r2", "r0"]
    assert rendezvous_order("caf\u00e9", ids) == ["r3", "r1", "r2", "r0"]


def test_rendezvous_weight_definition():
    def weight(m, r):
        d = hashlib.blake2b(f"{m}\x00{r}".encode(), digest_size=8).digest()
        return int.from_bytes(d, "big")

    ids = [f"rep-{i}" for i in range(7)]
    for m in ("a", "bert", "x/y:z"):
        expected = sorted(ids, key=lambda r: (-weight(m, r), r))
        assert rendezvous_order(m, ids) == expected


def test_rendezvous_independent_of_input_order():
    ids = [f"r{i}" for i in range(6)]
    rng = random.Random(7)
    for m in ("a", "b", "llama-7b", "resnet50"):
        expected = rendezvous_order(m, ids)
        assert sorted(expected) == sorted(ids)
        for _ in range(10):
            shuffled = ids[:]
            rng.shuffle(shuffled)
            assert rendezvous_order(m, shuffled) == expected
            assert rendezvous_order(m, iter(shuffled)) == expected


def test_rendezvous_empty():
    assert rendezvous_order("m", []) == []


def test_rendezvous_minimal_disruption_on_removal():
    ids = [f"r{i}" for i in range(5)]
    remaining = [i for i in ids if i != "r2"]
    moved = 0
    for n in range(1000):
        m = f"model-{n}"
        before = rendezvous_order(m, ids)
        after = rendezvous_order(m, remaining)
        # Relative order of the survivors is unchanged, so only r2's models move...
        assert after == [i for i in before if i != "r2"]
        if before[0] == "r2":
            moved += 1
            assert after[0] == before[1]  # ...and they move to their second choice
        else:
            assert after[0] == before[0]
    assert 120 < moved < 280  # about a fifth


def test_rendezvous_spread_roughly_uniform():
    ids = ["r0", "r1", "r2", "r3"]
    counts = collections.Counter(rendezvous_order(f"model-{n}", ids)[0] for n in range(1000))
    assert set(counts) == set(ids)
    for c in counts.values():
        assert 190 <= c <= 310, counts


def test_independent_routers_agree_on_cold_home():
    reps = [rs(f"r{i}", ongoing=i % 2) for i in range(5)]
    for m in ("m1", "m2", "m3", "llama-7b"):
        c1 = choose_replica(reps, m, rng=random.Random(1))
        c2 = choose_replica(list(reversed(reps)), m, rng=random.Random(999))
        assert c1 == c2
        assert c1.reason is Reason.COLD


# ---------------------------------------------------------------- simulation


@dataclass
class FakeReplica:
    replica_id: str
    max_ongoing: int = 5
    ongoing: int = 0
    loaded: set[str] = field(default_factory=set)
    loading: set[str] = field(default_factory=set)

    def state(self) -> ReplicaState:
        return ReplicaState(
            self.replica_id,
            self.ongoing,
            self.max_ongoing,
            frozenset(self.loaded),
            frozenset(self.loading),
        )


class FakeRouter:
    """A router's bookkeeping in miniature: dispatching a request marks its model loading."""

    def __init__(self, ids, seed=0):
        self.replicas = {i: FakeReplica(i) for i in ids}
        self.rng = random.Random(seed)

    def route(self, model_id, **kw) -> Choice:
        choice = choose_replica(
            [r.state() for r in self.replicas.values()], model_id, rng=self.rng, **kw
        )
        if choice.replica_id is not None:
            r = self.replicas[choice.replica_id]
            r.ongoing += 1
            if model_id not in r.loaded:
                r.loading.add(model_id)
        return choice

    def finish_load(self, replica_id, model_id):
        r = self.replicas[replica_id]
        r.loading.discard(model_id)
        r.loaded.add(model_id)

    def finish_request(self, replica_id):
        self.replicas[replica_id].ongoing -= 1


def test_cold_burst_loads_model_once():
    router = FakeRouter(["A", "B"])
    model = "burst-model"
    expected_home = home(model, ["A", "B"])
    # Even with a huge debt and free load cost, nothing spills while the load is under way.
    choices = [router.route(model, wait_debt_s=1e9, load_cost_s=0.0) for _ in range(20)]
    reasons = collections.Counter(c.reason for c in choices)
    assert reasons == {Reason.COLD: 1, Reason.HOLDER: 4, Reason.WAIT_LOADING: 15}
    assert {c.replica_id for c in choices if c.replica_id} == {expected_home}
    other = "B" if expected_home == "A" else "A"
    assert router.replicas[other].loading == set() and router.replicas[other].ongoing == 0

    # Load done; home still saturated. Rent until the waiting adds up to one load...
    router.finish_load(expected_home, model)
    meter = SpillMeter(half_life_s=10.0)
    now = 0.0
    queued = 15
    spilled_at = None
    for step in range(100):
        now += 0.01
        meter.add(model, 0.01 * queued, now)  # every queued request waited another 10 ms
        c = router.route(model, wait_debt_s=meter.debt(model, now), load_cost_s=1.0)
        if c.replica_id is None:
            assert c.reason is Reason.WAIT_SATURATED
            assert meter.debt(model, now) < 1.0
            continue
        # ...then buy: spill exactly once, to the other replica.
        assert c == Choice(other, Reason.SPILL)
        spilled_at = step
        meter.reset(model)
        break
    assert spilled_at is not None and 5 <= spilled_at <= 8  # ~1 s of debt at 0.15 s per step
    # The spill target is now a (loading) holder, so the rest go there, not to a third load.
    follow = [router.route(model) for _ in range(4)]
    assert all(c == Choice(other, Reason.HOLDER) for c in follow)
    assert router.route(model, wait_debt_s=1e9, load_cost_s=0.0) == Choice(
        None, Reason.WAIT_LOADING
    )


def test_independent_routers_send_same_cold_model_to_same_replica():
    r1, r2 = FakeRouter(["A", "B", "C"], seed=1), FakeRouter(["A", "B", "C"], seed=2)
    for m in ("m-a", "m-b", "m-c", "m-d"):
        assert r1.route(m) == r2.route(m)


# ---------------------------------------------------------------- SpillMeter


def test_spill_meter_decay():
    meter = SpillMeter(half_life_s=10.0)
    assert meter.debt("m", 0.0) == 0.0
    assert meter.add("m", 4.0, now=100.0) == pytest.approx(4.0)
    assert meter.debt("m", 100.0) == pytest.approx(4.0)
    assert meter.debt("m", 110.0) == pytest.approx(2.0)
    assert meter.debt("m", 120.0) == pytest.approx(1.0)
    assert meter.debt("m", 105.0) == pytest.approx(4.0 * 2 ** -0.5)
    # Reading does not mutate.
    assert meter.debt("m", 100.0) == pytest.approx(4.0)
    # Adding decays to now first, then adds.
    assert meter.add("m", 1.0, now=110.0) == pytest.approx(3.0)
    assert meter.debt("m", 130.0) == pytest.approx(0.75)
    # Models are independent.
    assert meter.debt("other", 130.0) == 0.0


def test_spill_meter_clock_going_backwards_does_not_grow_debt():
    meter = SpillMeter(half_life_s=1.0)
    meter.add("m", 2.0, now=10.0)
    assert meter.debt("m", 5.0) == pytest.approx(2.0)
    meter.add("m", 1.0, now=5.0)
    assert meter.debt("m", 10.0) == pytest.approx(3.0)
    assert meter.debt("m", 11.0) == pytest.approx(1.5)


def test_spill_meter_reset_and_forget_idle():
    meter = SpillMeter(half_life_s=1.0)
    meter.add("hot", 1.0, now=0.0)
    meter.add("cold", 1.0, now=0.0)
    meter.add("hot", 1.0, now=20.0)
    assert len(meter) == 2
    meter.forget_idle(now=20.0)  # "cold" is at 2**-20 < 1e-3
    assert "cold" not in meter and "hot" in meter
    meter.forget_idle(now=20.0, below=2.0)
    assert len(meter) == 0
    meter.add("m", 1.0, now=0.0)
    meter.reset("m")
    meter.reset("never-seen")
    assert meter.debt("m", 0.0) == 0.0 and len(meter) == 0


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf])
def test_spill_meter_half_life_validation(bad):
    with pytest.raises(ValueError, match="half_life_s"):
        SpillMeter(half_life_s=bad)


def test_spill_meter_rejects_negative_seconds():
    with pytest.raises(ValueError, match="seconds"):
        SpillMeter().add("m", -1.0, now=0.0)


def test_with_wait_for_loads_a_request_waits_for_a_load_under_way_rather_than_take_a_slot():
    loading = ReplicaState("a", 1, 5, frozenset(), frozenset({M}), True, frozenset({M}))
    others = [rs("b"), rs("c")]
    assert choose([loading, *others], wait_for_loads=True) == Choice(None, Reason.WAIT_LOADING)
    assert choose([loading, *others]).replica_id == "a"  # without it: the slot, as before
    # Sent there by this router but not said to be loading yet: it may never load (a method
    # that does not call the loader), so it is a holder like any other.
    sent = ReplicaState("a", 1, 5, frozenset(), frozenset({M}), True)
    assert choose([sent, *others], wait_for_loads=True).replica_id == "a"
    ready = rs("b", loaded={M})
    assert choose([loading, ready, rs("c")], wait_for_loads=True) == Choice("b", Reason.HOLDER)
