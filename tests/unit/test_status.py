"""The status pieces that are pure: the last minute's stats from router reports, the page's
load/unload events, the CLI's text, and where a browser's token is read from."""

from __future__ import annotations

from modelplex._dashboard import cells, diff, presented_token
from modelplex._messages import DeploymentID, RouterReport
from modelplex._scaler import Scaler
from modelplex._status import render

D = DeploymentID("app", "Models")


def report(router: str, placed: int, misses: int, held, queued: int = 0) -> RouterReport:
    return RouterReport(router, D, ongoing=1, queued=queued, placed=placed, misses=misses,
                        models=(), held=held, slots=3)


def test_stats_count_each_load_once_over_the_last_minute():
    scaler = Scaler()
    held = (("r1", (("a", 0.2), ("b", 0.4))),)
    scaler.record(report("x", 4, 2, held), now=0.0)
    scaler.record(report("y", 2, 0, held, queued=3), now=0.5)  # another router, same loads
    stats = scaler.stats(D, now=1.0)
    assert (stats.requests, stats.hit_rate, stats.loads) == (6, round(1 - 2 / 6, 4), 2)
    assert (stats.load_p50_s, stats.load_p99_s) == (0.2, 0.4)
    assert (stats.ongoing, stats.queued) == (2, 3)
    # b is loaded again (another load time); a stays held past the minute: not a new load.
    scaler.record(report("x", 1, 1, (("r1", (("a", 0.2), ("b", 0.6))),)), now=61.0)
    stats = scaler.stats(D, now=61.0)
    assert (stats.requests, stats.hit_rate, stats.loads, stats.load_p50_s) == (1, 0.0, 1, 0.6)
    assert (stats.ongoing, stats.queued) == (1, 0)  # the silent routers' reports expired
    assert scaler.stats(DeploymentID("app", "other"), now=61.0).hit_rate is None


def _doc(replicas):
    return {"window_s": 60.0, "applications": {"app": {
        "name": "app", "status": "RUNNING", "route_prefix": "/", "ingress": "Models",
        "deployments": {"Models": {
            "name": "Models", "status": "HEALTHY", "target_replicas": 1, "ongoing": 0,
            "queued": 0, "requests": 10, "hit_rate": 0.9, "loads": 1, "load_p50_s": 0.25,
            "load_p99_s": 1.5, "replicas": replicas,
        }},
    }}}


def _replica(rid, models, ongoing=0):
    return {"replica_id": rid, "state": "running", "node": "n" * 56, "pid": 7,
            "ongoing": ongoing, "queued": 0, "models": [
                {"replica_id": rid, "model_id": m, "state": s, "size_bytes": 2048, "idle_s": 1.0,
                 "load_s": 0.25, "pinned": m == "p", "in_use": 0} for m, s in models]}


def test_diff_reports_loads_and_unloads_but_not_replicas_that_did_not_answer():
    before = cells(_doc([_replica("r1", [("a", "loading"), ("b", "loaded")]),
                         _replica("r2", [("c", "loaded")])]))
    silent = _replica("r2", [])
    silent["ongoing"] = None
    after = cells(_doc([_replica("r1", [("a", "loaded")]), silent]))
    events = diff(before, after, answered={"r1"}, now=5.0)
    assert [(e["event"], e["replica"], e["model"]) for e in events] == [
        ("loaded", "r1", "a"), ("unloaded", "r1", "b"),
    ]


def test_render_lists_applications_deployments_replicas_and_models():
    text = render(_doc([_replica("r1", [("a", "loaded"), ("p", "loaded")], ongoing=2)]))
    assert text.splitlines() == [
        "app  RUNNING  route /  ingress Models",
        "  Models  HEALTHY  replicas 1/1  ongoing 0  queued 0  last 60s: requests 10  "
        "hit rate 90%  loads 1  load p50 250ms  p99 1.5s",
        "    REPLICA  STATE    NODE          PID  ONGOING  QUEUED",
        "    r1       running  nnnnnnnnnnnn  7    2        0",
        "      MODEL  STATE   SIZE   IDLE  IN USE",
        "      a      loaded  2.0KB  1.0s  0",
        "      p      pinned  2.0KB  1.0s  0",
    ]
    assert render({"applications": {}}) == "no applications\n"


def test_token_from_header_then_query_then_cookie():
    def scope(headers=(), query=b""):
        return {"headers": list(headers), "query_string": query}

    cookie = (b"cookie", b"other=1; modelplex_token=c%20d")
    assert presented_token(scope([(b"authorization", b"Bearer h"), cookie], b"token=q")) == ("h", False)
    assert presented_token(scope([cookie], b"token=q")) == ("q", True)
    assert presented_token(scope([cookie])) == ("c d", False)
    assert presented_token(scope()) == (None, False)


def test_a_deployment_that_does_not_autoscale_keeps_bounded_history():
    from modelplex._messages import DeploymentID, RouterReport
    from modelplex._scaler import DEMAND_KEEP_S, Scaler

    scaler = Scaler()
    deployment = DeploymentID("app", "d")
    for i in range(5000):
        now = i * 0.5
        scaler.record(
            RouterReport(f"r{i % 3}", deployment, 0, 0, 1, 0, (("m", 1),), (), 4), now
        )
    window = scaler._windows[deployment]
    assert len(window.demand) <= 2 * DEMAND_KEEP_S / 0.5 + 1
