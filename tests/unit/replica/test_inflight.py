"""What a replica tells each router of the requests the other routers run there."""

from __future__ import annotations

from modelplex._messages import InFlight
from modelplex._replica.inflight import InFlightCounts


def make():
    sent: list[tuple[str, InFlight]] = []
    scheduled: list = []
    counts = InFlightCounts(lambda conn, m: sent.append((conn, m)),
                            lambda delay, flush: scheduled.append(flush))
    return counts, sent, scheduled


def test_one_router_alone_is_told_nothing():
    counts, sent, scheduled = make()
    counts.connected("a")
    for _ in range(3):
        counts.arrived("a", "m")
    counts.finished("a", "m")
    assert scheduled == [] and sent == []
    assert counts.others("a") == {}


def test_each_router_hears_what_the_others_run_once_per_burst():
    counts, sent, scheduled = make()
    counts.connected("a")
    counts.connected("b")
    for _ in range(3):
        counts.arrived("a", "m")
    counts.arrived("b", "m")
    counts.arrived("b", "")  # no model id: not counted
    assert len(scheduled) == 1  # coalesced: one flush for the burst
    scheduled.pop()()
    assert dict(sent) == {"a": InFlight((("m", 1),)), "b": InFlight((("m", 3),))}
    sent.clear()
    counts.finished("a", "m")
    scheduled.pop()()
    assert sent == [("b", InFlight((("m", 2),)))]  # a's view did not change: a is not told


def test_a_router_that_leaves_takes_its_requests_with_it():
    counts, sent, scheduled = make()
    for conn in "ab":
        counts.connected(conn)
    counts.arrived("a", "m")
    scheduled.pop()()
    sent.clear()
    counts.disconnected("a")
    counts.finished("a", "m")  # its request ends after its connection: already out
    scheduled.pop()()
    assert sent == [("b", InFlight(()))]  # b, alone now, takes back what it was told
    assert counts.others("b") == {}


def test_a_closed_connection_does_not_stop_the_others_being_told():
    def send(conn, message):
        if conn == "a":
            raise ConnectionError("closed")
        got.append(conn)

    got: list = []
    scheduled: list = []
    counts = InFlightCounts(send, lambda delay, flush: scheduled.append(flush))
    for conn in "ab":
        counts.connected(conn)
    counts.arrived("a", "m")
    counts.arrived("b", "m")
    scheduled.pop()()
    assert got == ["b"]
