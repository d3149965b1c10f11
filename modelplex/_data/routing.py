"""Where a request goes: the replica-choice policy of one router.

Pure policy, no I/O and no clock: callers hand in their view of each replica (what *this*
router has in flight, what it believes is loaded or loading) and get back a ``Choice``.
Several routers may run at once without talking to each other, so the policy leans on two
things they all agree on without coordination:

* ``rendezvous_order`` (highest-random-weight hashing) is a pure function of the model id and
  the replica ids, so every router sends a cold model to the same "home" replica, and a model
  returns home after eviction.
* Spreading a hot model to a second replica is rent-or-buy: only once requests have waited on
  its saturated holders for as long as one load costs (``SpillMeter`` keeps that debt).

Randomness (power of two choices for requests without a model id) comes from an injected
``random.Random`` so tests and simulations are reproducible.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import math
import random
from dataclasses import dataclass
from typing import Iterable, Sequence

__all__ = [
    "Choice",
    "Reason",
    "ReplicaState",
    "SpillMeter",
    "choose_replica",
    "rendezvous_order",
]


@dataclass(frozen=True)
class ReplicaState:
    """One router's view of one replica at the moment of a decision."""

    replica_id: str
    ongoing: int  # requests this router has in flight on it
    max_ongoing: int
    loaded: frozenset[str] = frozenset()
    # Loading there, or this router already sent a request that will load it: counting the
    # latter is what stops a burst from choosing a second cold replica before the first
    # replica has reported anything.
    loading: frozenset[str] = frozenset()
    # Can take one more model without evicting one; unknown -> True (optimistic, so a fresh
    # replica is not shunned).
    has_model_room: bool = True
    # What the replica itself says it is loading now (``loading`` adds this router's sends).
    reported_loading: frozenset[str] = frozenset()

    @property
    def saturated(self) -> bool:
        """No slot left for another request from this router."""
        return self.ongoing >= self.max_ongoing

    def holds(self, model_id: str) -> bool:
        """Has the model, or will have it once a load already under way finishes."""
        return model_id in self.loaded or model_id in self.loading


class Reason(enum.Enum):
    """Why a ``Choice`` was made; routers use it for metrics and for what to do next."""

    HOLDER = "holder"  # a replica that has (or is loading) the model had room
    COLD = "cold"  # nobody holds the model: its rendezvous home (or next best) loads it
    SPILL = "spill"  # holders saturated long enough: load it on one more replica
    ANY = "any"  # request without a model id: power of two choices
    WAIT_LOADING = "wait_loading"  # holders saturated, a load is under way: wait for it
    WAIT_SATURATED = "wait_saturated"  # holders saturated, spilling not (yet) worth it
    WAIT_BUSY = "wait_busy"  # every usable replica is saturated
    NO_REPLICAS = "no_replicas"  # the deployment has no replicas right now


@dataclass(frozen=True)
class Choice:
    """The decision: a replica id, or None meaning keep the request queued and ask again."""

    replica_id: str | None
    reason: Reason


def _weight(model_id: str, replica_id: str) -> int:
    # blake2b rather than hash(): the weight must be identical in every process and run, or
    # independent routers would disagree about where a cold model lives.
    digest = hashlib.blake2b(
        f"{model_id}\x00{replica_id}".encode("utf-8", "surrogatepass"), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big")


def rendezvous_order(model_id: str, replica_ids: Iterable[str]) -> list[str]:
    """Replica ids ordered by preference for ``model_id`` (highest random weight first).

    Independent of the input order; removing a replica only moves the models whose first
    choice it was, and adding one only takes models whose new first choice it is.
    """
    return sorted(replica_ids, key=lambda rid: (-_weight(model_id, rid), rid))


def _first_by_rendezvous(model_id: str, candidates: Sequence[ReplicaState]) -> ReplicaState:
    """The candidate first in rendezvous order, preferring ones with room for another model.

    Room first because loading into a full replica evicts a model someone may still want.
    """
    roomy = [r for r in candidates if r.has_model_room]
    pool = roomy or candidates
    by_id = {r.replica_id: r for r in pool}
    return by_id[rendezvous_order(model_id, by_id)[0]]


def _power_of_two(replicas: Sequence[ReplicaState], rng: random.Random) -> Choice:
    free = [r for r in replicas if not r.saturated]
    if not free:
        return Choice(None, Reason.WAIT_BUSY)
    if len(free) == 1:
        return Choice(free[0].replica_id, Reason.ANY)
    a, b = rng.sample(free, 2)
    return Choice((b if b.ongoing < a.ongoing else a).replica_id, Reason.ANY)


def choose_replica(
    replicas: Sequence[ReplicaState],
    model_id: str,
    *,
    rng: random.Random,
    wait_debt_s: float = 0.0,
    load_cost_s: float = 1.0,
    max_replicas_per_model: int | None = None,
    wait_for_loads: bool = False,
) -> Choice:
    """Pick a replica for one request for ``model_id`` ("" = no model), or say why to wait.

    ``wait_debt_s`` is how long requests for this model have waited on its saturated holders
    (see ``SpillMeter``); ``load_cost_s`` is the caller's estimate of one load. The model
    spreads to one more replica only once the debt reaches the cost (ski rental, 2-competitive).
    ``max_replicas_per_model`` caps how many replicas this router lets hold the model.
    With ``wait_for_loads`` (the deployment has a loader), a request does not take a slot on a
    holder that says it is still loading the model: it waits for the load, and the slot stays
    free for other models meanwhile.
    """
    if math.isnan(load_cost_s) or load_cost_s < 0:
        raise ValueError(f"load_cost_s must be >= 0, got {load_cost_s!r}")
    if math.isnan(wait_debt_s):
        raise ValueError(f"wait_debt_s must be a number, got {wait_debt_s!r}")
    if max_replicas_per_model is not None and max_replicas_per_model < 1:
        raise ValueError(f"max_replicas_per_model must be >= 1, got {max_replicas_per_model!r}")

    if not replicas:
        return Choice(None, Reason.NO_REPLICAS)
    if model_id == "":
        return _power_of_two(replicas, rng)

    holders = [r for r in replicas if r.holds(model_id)]
    if holders:
        free_holders = [r for r in holders if not r.saturated]
        if wait_for_loads:
            free_holders = [
                r for r in free_holders
                if model_id in r.loaded or model_id not in r.reported_loading
            ]
            if not free_holders and any(model_id in r.reported_loading for r in holders):
                return Choice(None, Reason.WAIT_LOADING)
        if free_holders:
            order = rendezvous_order(model_id, (r.replica_id for r in free_holders))
            rank = {rid: i for i, rid in enumerate(order)}
            best = min(
                free_holders,
                key=lambda r: (r.ongoing, model_id not in r.loaded, rank[r.replica_id]),
            )
            return Choice(best.replica_id, Reason.HOLDER)
        # Every holder is saturated.
        if any(model_id not in r.loaded for r in holders):
            # A second load elsewhere cannot finish before the one under way, so waiting is
            # never worse; this is what makes a burst of cold requests load the model once.
            return Choice(None, Reason.WAIT_LOADING)
        if max_replicas_per_model is not None and len(holders) >= max_replicas_per_model:
            return Choice(None, Reason.WAIT_SATURATED)
        if wait_debt_s < load_cost_s:
            # Rent: waiting so far has cost less than one load would.
            return Choice(None, Reason.WAIT_SATURATED)
        others = [r for r in replicas if not r.holds(model_id) and not r.saturated]
        if not others:
            return Choice(None, Reason.WAIT_SATURATED)
        return Choice(_first_by_rendezvous(model_id, others).replica_id, Reason.SPILL)

    free = [r for r in replicas if not r.saturated]
    if not free:
        return Choice(None, Reason.WAIT_BUSY)
    return Choice(_first_by_rendezvous(model_id, free).replica_id, Reason.COLD)


class SpillMeter:
    """Per-model waiting debt that halves every ``half_life_s`` seconds.

    Decay makes the debt mean "recent waiting": a model that was briefly hot an hour ago should
    not spill on its next short burst. Clock-free: every call takes ``now`` from the caller, so
    tests pass explicit times. A ``now`` earlier than the last update is treated as no time
    passing (debt never grows from a clock going backwards).
    """

    def __init__(self, half_life_s: float = 10.0, max_entries: int | None = None) -> None:
        if isinstance(half_life_s, bool) or not isinstance(half_life_s, (int, float)):
            raise TypeError(f"half_life_s must be a number, got {half_life_s!r}")
        if not half_life_s > 0 or math.isinf(half_life_s):
            raise ValueError(f"half_life_s must be a finite number > 0, got {half_life_s!r}")
        if max_entries is not None and (isinstance(max_entries, bool) or max_entries < 1):
            raise ValueError(f"max_entries must be >= 1 or None, got {max_entries!r}")
        self.half_life_s = float(half_life_s)
        self.max_entries = max_entries
        self._debts: dict[str, tuple[float, float]] = {}  # model_id -> (debt, as of time)

    def _decayed(self, model_id: str, now: float) -> float:
        entry = self._debts.get(model_id)
        if entry is None:
            return 0.0
        value, at = entry
        elapsed = max(0.0, now - at)
        return value * 0.5 ** (elapsed / self.half_life_s)

    def add(self, model_id: str, seconds: float, now: float) -> float:
        """Add ``seconds`` of waiting at time ``now``; returns the new debt."""
        if math.isnan(seconds) or seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        value = self._decayed(model_id, now) + seconds
        previous = self._debts.get(model_id)
        if previous is None and self.max_entries is not None and len(self._debts) >= self.max_entries:
            self._make_room(now)
        at = now if previous is None else max(now, previous[1])
        self._debts[model_id] = (value, at)
        return value

    def debt(self, model_id: str, now: float) -> float:
        """The decayed debt at ``now`` (0.0 for an unknown model)."""
        return self._decayed(model_id, now)

    def reset(self, model_id: str) -> None:
        """Forget a model's debt, e.g. once a spill has paid for the load."""
        self._debts.pop(model_id, None)

    def forget_idle(self, now: float, below: float = 1e-3) -> None:
        """Drop entries whose debt has decayed under ``below`` so the dict stays bounded."""
        for model_id in [m for m in self._debts if self._decayed(m, now) < below]:
            del self._debts[model_id]

    def _make_room(self, now: float) -> None:
        """Forget idle debts; if that frees too little, the oldest quarter (amortized O(1))."""
        self.forget_idle(now)
        if len(self._debts) >= self.max_entries:
            for model_id in list(itertools.islice(self._debts, max(1, self.max_entries // 4))):
                del self._debts[model_id]

    def __len__(self) -> int:
        return len(self._debts)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._debts
