"""Metrics without processes: the cardinality bound, the options, the recorders' output as
prometheus-client's parser reads it, and the Grafana dashboard."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelplex._obs import cardinality, folder
from modelplex._obs.metrics import Metrics
from modelplex._replica.cache import ModelCache
from modelplex._config import MetricsOptions
from modelplex._messages import DeploymentID

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_top_models_folds_a_stream_of_distinct_ids():
    top = cardinality.TopModels(5)
    labels = {top.label(f"m{i}") for i in range(10_000)}
    assert len(labels) == 6 and cardinality.OTHER in labels


def test_top_models_lets_a_busy_id_in_and_bounds_every_label_ever_given():
    top = cardinality.TopModels(2)
    assert top.label("a") == "a" and top.label("b") == "b"
    assert top.label("c") == cardinality.OTHER
    assert top.label("c") == "c"  # now busier than the least busy labelled id
    assert top.current("a") == cardinality.OTHER or top.current("b") == cardinality.OTHER
    given = set()
    for i in range(1000):  # churn: each id asked twice in a row
        given |= {top.label(f"x{i}"), top.label(f"x{i}")}
    assert len(given - {cardinality.OTHER}) <= 2 * 2


def test_metrics_options_from_the_environment():
    assert MetricsOptions.from_env({}) == MetricsOptions(True, 50)
    assert MetricsOptions.from_env({"MODELPLEX_METRICS": "0"}).enabled is False
    assert MetricsOptions.from_env({"MODELPLEX_METRICS_TOP_MODELS": "7"}).top_models == 7
    with pytest.raises(ValueError, match="MODELPLEX_METRICS_TOP_MODELS"):
        MetricsOptions.from_env({"MODELPLEX_METRICS_TOP_MODELS": "0"})
    with pytest.raises(ValueError, match="MODELPLEX_METRICS"):
        MetricsOptions.from_env({"MODELPLEX_METRICS": "maybe"})


class Recorder:
    """A plain CacheEvents: what the cache said, as tuples."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def __getattr__(self, name):
        return lambda *args: self.seen.append((name, *args))


async def test_cache_tells_its_events_with_eviction_reasons():
    events = Recorder()
    cache = ModelCache(_load, max_models=1, events=events)
    await cache.get("a")
    await cache.get("a")
    await cache.get("b")  # evicts a: lru
    await cache.unload("b")
    await cache.get("c")
    await cache.close(reason="redeploy")
    names = [e for e in events.seen if e[0] in ("requested", "evicted")]
    assert names == [
        ("requested", "a", False), ("requested", "a", True), ("requested", "b", False),
        ("evicted", "a", "lru"), ("evicted", "b", "unload_api"), ("requested", "c", False),
        ("evicted", "c", "redeploy"),
    ]
    assert [e[1] for e in events.seen if e[0] == "loaded"] == ["a", "b", "c"]
    assert sorted(e[1] for e in events.seen if e[0] == "unloaded") == ["a", "b", "c"]


async def test_byte_budget_evictions_say_bytes():
    events = Recorder()
    cache = ModelCache(_load, max_models=10, max_bytes=10, sizer=lambda m: 6, events=events)
    await cache.get("a")
    await cache.get("b")
    assert ("evicted", "a", "bytes") in events.seen


async def test_recorders_write_what_the_parser_reads(tmp_path):
    directory = str(tmp_path / "node")
    folder.install(directory)
    try:
        metrics = Metrics(MetricsOptions(top_models=1))
        folder.publish(metrics.store, directory)
        deployment = DeploymentID("app", "D")
        cache = ModelCache(_load, max_models=1, events=metrics.cache_events(deployment, "r1"))
        for model in ("a", "a", "b"):
            await cache.get(model)
        metrics.router_events(deployment).placed("spill", True, True)
        metrics.http_request("/", "GET", "app", 200, 0.01)
        metrics.http_request("/", "BREW", "app", 500, 0.01)
        body, media = folder.exposition(directory)
    finally:
        folder.uninstall()
    assert media.startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    dep = (("application", "app"), ("deployment", "D"))
    assert samples[("modelplex_multiplexed_cache_hits_total", dep)] == 1
    assert samples[("modelplex_multiplexed_cache_misses_total", dep)] == 2
    assert samples[("modelplex_multiplexed_model_evictions_total", dep + (("reason", "lru"),))] == 1
    assert samples[("modelplex_multiplexed_spills_total", dep)] == 1
    assert samples[("modelplex_multiplexed_duplicate_loads_total", dep)] == 1
    by_model = {k[1]: v for k, v in samples.items() if k[0] == "modelplex_multiplexed_model_requests_total"}
    assert by_model == {dep + (("model_id", "a"),): 2, dep + (("model_id", "__other__"),): 1}
    assert samples[("modelplex_num_http_error_requests_total", (
        ("application", "app"), ("error_code", "500"), ("method", "OTHER"), ("route", "/")))] == 1


def test_the_tenant_figures_as_the_parser_reads_them(tmp_path):
    directory = str(tmp_path / "node")
    folder.install(directory)
    try:
        metrics = Metrics(MetricsOptions(top_models=2))
        folder.publish(metrics.store, directory)
        router = metrics.router_events(DeploymentID("app", "D"))
        for seconds in (0.0, 0.25, 1.5):
            router.waited(seconds)
        for model_id, seconds in (("noisy", 2.0), ("noisy", 1.0), ("quiet", 0.5), ("", 0.5)):
            router.served(model_id, seconds)
        router.shed("noisy", "model_queue")
        router.shed("quiet", "queue")
        router.shares({"noisy": 0.75, "quiet": 0.25})
        router.shares({"noisy": 1.0})  # quiet went quiet: its share goes to 0
        body, _ = folder.exposition(directory)
    finally:
        folder.uninstall()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    dep = (("application", "app"), ("deployment", "D"))

    def by_model(name: str, *extra) -> dict:
        return {dict(k[1])["model_id"]: v for k, v in samples.items()
                if k[0] == name and all(e in k[1] for e in extra)}

    assert samples[("modelplex_deployment_queue_wait_ms_count", dep)] == 3
    assert samples[("modelplex_deployment_queue_wait_ms_sum", dep)] == 1750
    assert by_model("modelplex_model_slot_seconds_total") == {"noisy": 3.0, "quiet": 0.5, "__none__": 0.5}
    assert by_model("modelplex_deployment_shed_requests_total", ("reason", "model_queue")) == {"noisy": 1}
    assert by_model("modelplex_model_fair_share") == {"noisy": 1.0, "quiet": 0.0}


def test_grafana_dashboard_is_json_on_these_metrics():
    with open(os.path.join(ROOT, "docs", "grafana-dashboard.json")) as f:
        dashboard = json.load(f)
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", ()))
    for name in ("modelplex_multiplexed_cache_hits_total", "modelplex_multiplexed_models_load_counter_total",
                 "modelplex_multiplexed_model_load_latency_ms_bucket", "modelplex_num_multiplexed_models",
                 "modelplex_deployment_request_counter_total",
                 "modelplex_deployment_processing_latency_ms_bucket"):
        assert name in exprs


async def _load(model_id: str) -> str:
    await asyncio.sleep(0)
    return model_id


def test_a_scrape_adds_up_the_node_s_processes_and_drops_the_gauges_of_ended_ones(tmp_path):
    import marshal
    import subprocess
    import sys

    from modelplex._obs.store import Counter, Gauge, Histogram, Store

    def store(hits: float, held: float, latency_ms: float) -> Store:
        s = Store()
        Counter(s, "hits", "h", ("deployment",)).labels("D").inc(hits)
        Gauge(s, "held", "g", ("deployment",)).labels("D").set(held)
        Histogram(s, "lat_ms", "l", ("deployment",), (1, 10)).labels("D").observe(latency_ms)
        return s

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead_pid, live_pid = int(ended.stdout), os.getppid()
    directory = str(tmp_path)
    for pid, s in ((dead_pid, store(10, 5, 0.5)), (live_pid, store(100, 50, 5))):
        with open(os.path.join(directory, f"modelplex-{pid}-0a0b.snapshot"), "wb") as f:
            f.write(marshal.dumps(s.snapshot()))
    publisher = folder.publish(store(1000, 500, 50), directory)  # this process: from memory
    try:
        body, _ = folder.exposition(directory)
    finally:
        publisher.stop()
    samples = {(s.name, s.labels.get("le")): s.value
               for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert samples[("hits_total", None)] == 1110  # every process's, the ended one's too
    assert samples[("held", None)] == 550  # the live processes' only
    assert [samples[("lat_ms_bucket", le)] for le in ("1.0", "10.0", "+Inf")] == [1, 2, 3]
    assert samples[("lat_ms_sum", None)] == 55.5 and samples[("lat_ms_count", None)] == 3


def test_a_process_publishes_while_it_counts_and_its_last_snapshot_keeps_only_counters(tmp_path):
    import marshal
    import time

    from modelplex._obs.store import Counter, Gauge, Store

    s = Store()
    hits = Counter(s, "hits", "h", ()).labels()
    Gauge(s, "held", "g", ()).labels().set(3)
    directory = str(tmp_path)
    folder.publish(s, directory)
    hits.inc()

    def published() -> dict:
        paths = [p for p in os.listdir(directory) if p.endswith(".snapshot")]
        if not paths:
            return {}
        with open(os.path.join(directory, paths[0]), "rb") as f:
            return marshal.loads(f.read())

    deadline = time.monotonic() + 5
    while published().get("hits", (0,) * 5)[4] != {(): 1.0}:
        assert time.monotonic() < deadline, published()
        time.sleep(folder.PUBLISH_S / 5)
    assert "held" in published()
    folder.process_ended(directory)
    assert published()["hits"][4] == {(): 1.0} and "held" not in published()
