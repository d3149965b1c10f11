"""The fairness policy alone: scripted arrivals over a few slots, time in milliseconds.

``simulate`` is a small discrete-event run: requests arrive at scripted times, wait in one
queue per flow, and whenever a slot is free the policy's ``order`` says which flow's oldest
request takes it. No event loop, no sleeping.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, defaultdict, deque

import pytest

from modelplex._config import TenantPolicy
from modelplex._data.fairness import Fairness


def simulate(arrivals, *, slots, service, policy=None, until=None, fairness=None):
    """``arrivals``: (time s, flow) pairs; ``service``: flow -> seconds a request holds a
    slot. Returns (per-flow requests served by ``until``, per-flow waits, the policy)."""
    fair = fairness or Fairness(policy or TenantPolicy())
    events = []  # (time, order, kind, flow, started)
    seq = itertools.count()
    for at, flow in arrivals:
        heapq.heappush(events, (at, next(seq), "arrive", flow, 0.0))
    queues: dict[str, deque] = defaultdict(deque)
    free = slots
    served: Counter = Counter()
    waits: dict[str, list[float]] = defaultdict(list)

    def dispatch(now: float) -> None:
        nonlocal free
        order = fair.order()
        try:
            for flow in order:
                if free == 0:
                    break
                arrived = queues[flow].popleft()
                fair.started(flow)  # as Placement does: charged, then out of the queue
                fair.unqueued(flow)
                free -= 1
                waits[flow].append(now - arrived)
                heapq.heappush(events, (now + service[flow], next(seq), "done", flow, now))
        finally:
            order.close()

    while events:
        now, _, kind, flow, started = heapq.heappop(events)
        if until is not None and now > until:
            break
        if kind == "arrive":
            queues[flow].append(now)
            fair.queued(flow)
        else:
            free += 1
            served[flow] += 1
            fair.finished(flow, now - started, now)
        dispatch(now)
    return served, waits, fair


def steady(flow: str, rate: float, seconds: float, start: float = 0.0):
    """``rate`` requests a second of ``flow`` from ``start`` for ``seconds``, evenly spaced."""
    n = int(rate * seconds)
    return [(start + i / rate, flow) for i in range(n)]


def test_a_lone_tenant_gets_every_slot():
    served, waits, _ = simulate(steady("a", 400, 1.0), slots=4, service={"a": 0.01}, until=1.0)
    assert served["a"] >= 390  # the pool's whole capacity (4 slots / 10 ms)
    assert max(waits["a"]) < 0.011  # it never waited behind an idle slot


def test_two_backlogged_flows_at_ten_to_one_are_served_alike():
    arrivals = steady("heavy", 1000, 2.0) + steady("light", 100, 2.0)
    served, _, _ = simulate(sorted(arrivals), slots=4, service={"heavy": 0.05, "light": 0.05},
                            until=2.0)
    # 4 slots / 50 ms = 80 a second: both are backlogged (offered 1,000 and 100 a second)
    assert served["heavy"] + served["light"] >= 150
    assert max(served.values()) / min(served.values()) <= 1.05


def test_fifo_serves_in_arrival_order_grouped_by_model():
    arrivals = steady("heavy", 1000, 2.0) + steady("light", 100, 2.0)
    served, _, _ = simulate(sorted(arrivals), slots=4, service={"heavy": 0.05, "light": 0.05},
                            policy=TenantPolicy(fairness="fifo"), until=2.0)
    assert served["heavy"] > 5 * served["light"]  # the flood takes what it asks for


def test_weights_divide_the_pool():
    arrivals = steady("gold", 1000, 2.0) + steady("plain", 1000, 2.0)
    policy = TenantPolicy(weights={"gold": 4})
    served, _, _ = simulate(sorted(arrivals), slots=4, service={"gold": 0.02, "plain": 0.02},
                            policy=policy, until=2.0)
    assert served["gold"] / served["plain"] == pytest.approx(4, rel=0.05)


def test_service_is_slot_time_so_long_requests_get_fewer_slots():
    arrivals = steady("long", 1000, 3.0) + steady("short", 1000, 3.0)
    served, _, _ = simulate(sorted(arrivals), slots=4, service={"long": 0.08, "short": 0.02},
                            until=3.0)
    slot_time = {"long": served["long"] * 0.08, "short": served["short"] * 0.02}
    assert slot_time["long"] / slot_time["short"] == pytest.approx(1, rel=0.1)


def test_a_quiet_tenant_waits_only_for_the_next_slot_to_free_behind_a_flood():
    quiet = [(0.5 + 0.137 * i, f"q{i % 9}") for i in range(50)]  # 9 ids, 7 a second
    flood = steady("noisy", 2000, 8.0)  # 10 times what 4 slots of 20 ms serve
    service = {"noisy": 0.02, **{f"q{i}": 0.02 for i in range(9)}}
    served, waits, _ = simulate(sorted(flood + quiet), slots=4, service=service, until=8.0)
    quiet_waits = [w for flow, ws in waits.items() if flow != "noisy" for w in ws]
    assert len(quiet_waits) == 50
    assert max(quiet_waits) <= 0.02 + 1e-9  # never longer than one request holds a slot
    assert served["noisy"] >= 0.99 * (8.0 * 4 / 0.02 - 50)  # and the flood keeps the rest
    _, fifo_waits, _ = simulate(sorted(flood + quiet), slots=4, service=service, until=8.0,
                                policy=TenantPolicy(fairness="fifo"))
    fifo_quiet = [w for flow, ws in fifo_waits.items() if flow != "noisy" for w in ws]
    assert len(fifo_quiet) < 10 and all(w > 1.0 for w in fifo_quiet)  # behind the backlog


def test_an_idle_tenant_cannot_bank_credit():
    """b runs alone for a second, then a arrives with a backlog: a is lifted to the service
    under way, so it does not take the pool for a second of its own."""
    arrivals = steady("b", 1000, 2.0) + [(1.0 + i * 0.0001, "a") for i in range(500)]
    served, waits, _ = simulate(sorted(arrivals), slots=2, service={"a": 0.01, "b": 0.01},
                                until=1.5)
    after = served["b"] - 200  # b had the pool (200 requests) for the first second
    assert served["a"] == pytest.approx(after, abs=3)  # then they share it


def test_a_newcomer_goes_before_the_flows_it_is_lifted_to():
    fair = Fairness()
    for _ in range(3):
        fair.queued("noisy")
    fair.unqueued("noisy")
    fair.started("noisy")
    fair.queued("quiet")
    fair.finished("noisy", 0.0, now=1.0)  # shorter than charged: no credit that would tie them
    assert list(fair.order())[0] == "quiet"


def test_order_passes_over_a_flow_once_and_restores_it():
    fair = Fairness()
    for flow in ("a", "b", "c"):
        fair.queued(flow)
    order = fair.order()
    assert next(order) == "a"  # the caller cannot place it: passed over
    assert next(order) == "b"
    fair.started("b")  # b is placed; b has nothing more waiting
    fair.unqueued("b")
    assert next(order) == "c"
    order.close()
    assert list(fair.order()) == ["a", "c"]


def test_fifo_drains_a_group_before_the_next():
    fair = Fairness(TenantPolicy(fairness="fifo"))
    fair.queued("a")
    fair.queued("b")
    fair.queued("a")
    seen = []
    order = fair.order()
    for flow in order:
        seen.append(flow)
        fair.started(flow)
        fair.unqueued(flow)
    assert seen == ["a", "a", "b"]


def test_weights_change_in_place():
    fair = Fairness()
    for _ in range(10):
        fair.queued("x")
        fair.queued("y")
    fair.configure(TenantPolicy(weights={"y": 3}))
    counts = Counter()
    for _ in range(8):
        order = fair.order()
        flow = next(order)
        order.close()
        fair.started(flow)
        fair.unqueued(flow)
        counts[flow] += 1
    assert counts == {"y": 6, "x": 2}


def test_a_flow_is_charged_the_slot_time_its_requests_took_lately():
    fair = Fairness(default_cost_s=1.0)
    fair.started("a")
    assert fair.counters()["a"] == pytest.approx(1.0)  # nothing measured yet: the default
    fair.finished("a", 0.25, now=1.0)
    assert fair.cost("a") == pytest.approx(0.25)  # its first measure
    assert fair.counters()["a"] == pytest.approx(1.0)  # charged once, never taken back
    fair.started("a")
    fair.finished("a", 0.5, now=1.0)
    assert fair.cost("a") == pytest.approx(0.25 + 0.2 * 0.25)  # then a running mean
    assert fair.cost("new") == pytest.approx(0.25 + 0.2 * 0.25)  # the deployment's mean


def test_memory_is_bounded_by_the_active_flows():
    fair = Fairness(max_idle=100)
    for i in range(100_000):
        flow = f"id-{i}"
        fair.queued(flow)
        fair.unqueued(flow)
        fair.started(flow)
        fair.finished(flow, 0.001 * (i % 7), now=i * 0.001)
    assert len(fair) <= 100
    assert len(fair._heap) <= 64
    assert len(fair._recent) <= 100


def test_shares_follow_recent_slot_time():
    fair = Fairness()
    for flow, seconds in (("a", 3.0), ("b", 1.0)):
        fair.started(flow)
        fair.finished(flow, seconds, now=0.0)
    assert fair.shares(0.0) == pytest.approx({"a": 0.75, "b": 0.25})
    fair.started("b")
    fair.finished("b", 4.0, now=10.0)  # a's 3 s halved to 1.5 since
    shares = fair.shares(10.0)
    assert shares["b"] == pytest.approx(4.5 / 6.0)
    assert sum(shares.values()) == pytest.approx(1.0)
