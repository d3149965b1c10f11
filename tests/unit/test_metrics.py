"""Metrics without processes: the cardinality bound, the options, the recorders' output as
prometheus-client's parser reads it, and the Grafana dashboard."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelplex import _metrics
from modelplex._cache import ModelCache
from modelplex._config import MetricsOptions
from modelplex._messages import DeploymentID

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_top_models_folds_a_stream_of_distinct_ids():
    top = _metrics.TopModels(5)
    labels = {top.label(f"m{i}") for i in range(10_000)}
    assert len(labels) == 6 and _metrics.OTHER in labels


def test_top_models_lets_a_busy_id_in_and_bounds_every_label_ever_given():
    top = _metrics.TopModels(2)
    assert top.label("a") == "a" and top.label("b") == "b"
    assert top.label("c") == _metrics.OTHER
    assert top.label("c") == "c"  # now busier than the least busy labelled id
    assert top.current("a") == _metrics.OTHER or top.current("b") == _metrics.OTHER
    given = set()
    for i in range(1000):  # churn: each id asked twice in a row
        given |= {top.label(f"x{i}"), top.label(f"x{i}")}
    assert len(given - {_metrics.OTHER}) <= 2 * 2


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
    _metrics.install(directory)
    try:
        metrics = _metrics.Metrics(MetricsOptions(top_models=1))
        deployment = DeploymentID("app", "D")
        cache = ModelCache(_load, max_models=1, events=metrics.cache_events(deployment, "r1"))
        for model in ("a", "a", "b"):
            await cache.get(model)
        metrics.router_events(deployment).placed("spill", True, True)
        metrics.http_request("/", "GET", "app", 200, 0.01)
        metrics.http_request("/", "BREW", "app", 500, 0.01)
        metrics.batch.flush()  # per-request figures are batched (FLUSH_S)
        body, media = _metrics.exposition(directory)
    finally:
        _metrics.uninstall()
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
