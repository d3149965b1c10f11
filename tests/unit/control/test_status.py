"""The status pieces that are pure: the last minute's figures from router reports and replica
events, the live page's feed of those events, and the CLI's text (where a browser's token is
read from: http/test_tokens.py)."""

from __future__ import annotations

import asyncio

from modelplex._control.figures import TIMELINE_KEEP, Figures
from modelplex._control.status import render
from modelplex._data.demand import Demand, latency_bucket, latency_quantile
from modelplex._http.dashboard import HISTORY, StatusFeed
from modelplex._messages import DeploymentID, ModelEvent, ModelEvents, RouterReport
from modelplex._types import ServeStatus

D = DeploymentID("app", "Models")


def report(router: str, placed: int, misses: int, *, with_model: int | None = None,
           queued: int = 0, latencies=(), queues=()) -> RouterReport:
    return RouterReport(router, D, ongoing=1, queued=queued, placed=placed, misses=misses,
                        models=(), held=(), slots=3,
                        with_model=placed if with_model is None else with_model,
                        latencies=tuple(latencies), queues=queues)


def events(replica: str, *items) -> ModelEvents:
    return ModelEvents(replica, tuple(ModelEvent(float(i), *item) for i, item in enumerate(items)))


def test_every_load_a_replica_tells_counts_even_one_no_report_could_see():
    figures = Figures()
    # Loaded and evicted within half a second: no router's report ever shows "b" held.
    figures.models(D, events("r1", ("loaded", "a", 0.2), ("loaded", "b", 0.4),
                             ("unloaded", "b", None, "lru"), ("loaded", "c", 0.6)), now=0.0)
    figures.models(D, events("r2", ("loaded", "b", 0.3)), now=0.5)
    stats = figures.stats(D, now=1.0)
    assert (stats.loads, stats.load_p50_s, stats.load_p99_s) == (4, 0.3, 0.6)
    assert figures.stats(D, now=61.0).loads == 0  # the minute has passed
    assert figures.stats(DeploymentID("app", "other"), now=1.0).hit_rate is None


def test_hit_rate_is_of_requests_that_named_a_model_and_latencies_are_the_requests():
    figures = Figures()
    fast, slow = latency_bucket(0.01), latency_bucket(0.25)
    figures.report(report("x", 10, 1, with_model=4, latencies=((fast, 9), (slow, 1))), now=0.0)
    figures.report(report("y", 2, 0, with_model=0, queued=3, latencies=((fast, 2),)), now=0.5)
    stats = figures.stats(D, now=1.0)
    assert (stats.requests, stats.hit_rate) == (12, 0.75)  # 1 miss in 4: the others named none
    assert abs(stats.latency_p50_s - 0.01) < 0.0005 and abs(stats.latency_p99_s - 0.25) < 0.012
    assert (stats.ongoing, stats.queued) == (2, 3)
    figures.report(report("x", 5, 0, with_model=0), now=3.0)
    stats = figures.stats(D, now=3.0)
    assert (stats.ongoing, stats.queued) == (1, 0)  # the silent router's report expired
    assert figures.stats(D, now=3.0).hit_rate == 0.75
    only_unnamed = Figures()
    only_unnamed.report(report("x", 5, 0, with_model=0), now=0.0)
    assert only_unnamed.stats(D, now=0.0).hit_rate is None  # neither hits nor misses


def test_a_router_reports_no_model_requests_apart_latencies_and_no_management_calls():
    from modelplex._data.registry import ReplicaView
    from modelplex._messages import ReplicaInfo

    demand = Demand("r", D)
    for model_id, loads in (("a", True), ("a", False), ("", False), ("", False)):
        demand.count(model_id, loads)
    for seconds in (0.002, 0.003, 0.3):
        demand.answered(seconds)
    view = ReplicaView(ReplicaInfo("r1", ("h", 1), 4))
    view.reserve("")  # a status probe in flight
    demand.managing += 1
    sent = demand.report([view], queued=0)
    assert (sent.placed, sent.with_model, sent.misses, sent.ongoing) == (4, 2, 1, 0)
    counts = dict(sent.latencies)
    assert sum(counts.values()) == 3 and abs(latency_quantile(counts, 0.5) - 0.003) < 0.0002
    assert demand.report([], queued=0).latencies == ()  # the counts start again


def test_the_timeline_numbers_events_in_order_and_keeps_a_bounded_tail():
    figures = Figures()
    figures.models(D, events("r1", ("loaded", "a", 0.2), ("unloaded", "a", None, "lru")), now=0.0)
    cursor, first = figures.timeline(0)
    assert [(e["seq"], e["event"], e["model"], e["reason"]) for e in first] == [
        (1, "loaded", "a", ""), (2, "unloaded", "a", "lru")]
    assert first[0]["load_s"] == 0.2 and first[0]["replica"] == "r1"
    assert figures.timeline(cursor) == (2, [])
    for i in range(TIMELINE_KEEP + 10):
        figures.models(D, events("r1", ("loaded", f"m{i}", 0.1)), now=1.0)
    cursor, kept = figures.timeline(0)
    assert len(kept) == TIMELINE_KEEP and kept[-1]["seq"] == cursor
    assert [e["model"] for e in figures.timeline(0, last=2)[1]] == [f"m{TIMELINE_KEEP + 8}",
                                                                    f"m{TIMELINE_KEEP + 9}"]


async def test_the_feed_sends_each_event_once_and_a_late_page_its_history():
    figures = Figures()
    for i in range(HISTORY + 5):  # before any page: only the last HISTORY are shown
        figures.models(D, events("r1", ("loaded", f"old{i}", 0.1)), now=0.0)

    async def collect() -> ServeStatus:
        return ServeStatus({})

    feed = StatusFeed(collect, events=figures.timeline, period_s=0.01)
    first_page = feed.listen()
    message = await asyncio.wait_for(first_page.get(), 5)
    assert [e["model"] for e in message["events"]][0] == "old5"
    assert len(message["events"]) == HISTORY
    # Loaded and evicted between two looks: both events still reach the page.
    figures.models(D, events("r1", ("loaded", "brief", 0.1), ("unloaded", "brief", None, "lru")),
                   now=1.0)
    seen = []
    while len(seen) < 2:
        seen += [(e["event"], e["model"]) for e in (await asyncio.wait_for(first_page.get(), 5))["events"]]
    assert seen == [("loaded", "brief"), ("unloaded", "brief")]
    late_page = feed.listen()
    late = await asyncio.wait_for(late_page.get(), 5)
    assert [e["model"] for e in late["events"]][-2:] == ["brief", "brief"]
    feed.close()


def test_stats_name_the_longest_queues_over_the_routers():
    figures = Figures()
    figures.report(report("x", 0, 0, queued=9, queues=(("noisy", 7), ("a", 2))), now=0.0)
    figures.report(report("y", 0, 0, queued=5, queues=(("noisy", 3), ("b", 2))), now=0.5)
    assert figures.stats(D, now=1.0).queues == (("noisy", 10), ("a", 2), ("b", 2))
    assert figures.stats(D, now=10.0).queues == ()  # both routers went silent


def _doc(replicas, longest_queues=None):
    return {"window_s": 60.0, "applications": {"app": {
        "name": "app", "status": "RUNNING", "route_prefix": "/", "ingress": "Models",
        "deployments": {"Models": {
            "name": "Models", "status": "HEALTHY", "target_replicas": 1, "ongoing": 0,
            "queued": 0, "requests": 10, "hit_rate": 0.9, "loads": 1, "load_p50_s": 0.25,
            "load_p99_s": 1.5, "replicas": replicas, "longest_queues": longest_queues or {},
            "latency_p50_s": 0.012, "latency_p99_s": 0.3,
        }},
    }}}


def _replica(rid, models, ongoing=0):
    return {"replica_id": rid, "state": "running", "node": "n" * 56, "pid": 7,
            "ongoing": ongoing, "queued": 0, "models": [
                {"replica_id": rid, "model_id": m, "state": s, "size_bytes": 2048, "idle_s": 1.0,
                 "load_s": 0.25, "pinned": m == "p", "in_use": 0} for m, s in models]}


def test_render_lists_applications_deployments_replicas_and_models():
    text = render(_doc([_replica("r1", [("a", "loaded"), ("p", "loaded")], ongoing=2)]))
    assert text.splitlines() == [
        "app  RUNNING  route /  ingress Models",
        "  Models  HEALTHY  replicas 1/1  ongoing 0  queued 0  last 60s: requests 10  "
        "p50 12ms  p99 300ms  hit rate 90%  loads 1  load p50 250ms  load p99 1.5s",
        "    REPLICA  STATE    NODE          PID  ONGOING  QUEUED",
        "    r1       running  nnnnnnnnnnnn  7    2        0",
        "      MODEL  STATE   SIZE   IDLE  IN USE",
        "      a      loaded  2.0KB  1.0s  0",
        "      p      pinned  2.0KB  1.0s  0",
    ]
    assert render({"applications": {}}) == "no applications\n"
    lines = render(_doc([], {"noisy": 40, "": 2})).splitlines()
    assert lines[2] == "    longest queues: noisy 40  (no model id) 2"


def test_a_deployment_that_does_not_autoscale_keeps_bounded_history():
    from modelplex._messages import DeploymentID, RouterReport
    from modelplex._control.autoscale.scaler import DEMAND_KEEP_S, Scaler

    scaler = Scaler()
    deployment = DeploymentID("app", "d")
    for i in range(5000):
        now = i * 0.5
        scaler.record(
            RouterReport(f"r{i % 3}", deployment, 0, 0, 1, 0, (("m", 1),), (), 4), now
        )
    window = scaler._windows[deployment]
    assert len(window.demand) <= 2 * DEMAND_KEEP_S / 0.5 + 1


def test_render_shows_ray_s_messages_and_the_proxies():
    doc = _doc([_replica("r1", [])])
    doc["applications"]["app"]["message"] = "Models: ValueError: bad weights"
    doc["applications"]["app"]["deployments"]["Models"]["message"] = "ValueError: bad weights"
    doc["proxies"] = {"n" * 56: "HEALTHY"}
    lines = render(doc).splitlines()
    assert lines[1] == "  message: Models: ValueError: bad weights"
    assert lines[3] == "    message: ValueError: bad weights"
    assert lines[-1] == "proxies  nnnnnnnnnnnn HEALTHY"


def test_render_shows_the_node_devices_and_what_a_pending_replica_waits_for():
    running = {**_replica("r1", []), "gpu_ids": ["0", "1"]}
    pending = {**_replica("r2", []), "state": "pending", "node": None, "pid": None,
               "ongoing": None, "waiting_for": "2 GPU: 0 of 2 free"}
    doc = {**_doc([running, pending]), "resources": {
        "total": {"CPU": 4.0, "GPU": 2.0, "accel": 1.0},
        "available": {"CPU": 4.0, "GPU": 0.0, "accel": 0.5}}}
    lines = render(doc).splitlines()
    assert lines[0] == "node  CPU 4/4 free  GPU 0/2 free  accel 0.5/1 free"
    assert lines[3:] == [
        "    REPLICA  STATE    NODE          PID  GPUS  ONGOING  QUEUED",
        "    r1       running  nnnnnnnnnnnn  7    0,1   0        0",
        "    r2       pending  -             -    -     -        0",
        "      waiting for 2 GPU: 0 of 2 free",
    ]
