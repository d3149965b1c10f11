"""GET /-/metrics, read by a real Prometheus server (Debian's ``prometheus``), and bounded."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

import modelplex as serve

from ..conftest import free_port, wait_until
from .models import make_echo

H = "serve_multiplexed_model_id"
LOAD_S = 0.25  # every load: inside the (200, 300] ms bucket, so the p50 reads 250


Slow = make_echo(8, load_s=LOAD_S, name="Slow")
Instant = make_echo(2, name="Instant", max_ongoing_requests=64)


class Prometheus:
    """``prometheus`` on a free port, scraping ``target``'s /-/metrics every second."""

    def __init__(self, target_port: int, workdir) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: modelplex\n    metrics_path: /-/metrics\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        )
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(self._ready, timeout=20, message="prometheus did not become ready")

    def _ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def query(self, promql: str) -> float | None:
        answer = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5).json()
        assert answer["status"] == "success", answer
        result = answer["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def prometheus(serve_instance, tmp_path):
    if shutil.which("prometheus") is None:
        pytest.skip("the prometheus server is not installed (Debian package prometheus; "
                    "sh tools/system-deps.sh installs it as root)")
    server = Prometheus(serve_instance.port, tmp_path)
    yield server
    server.stop()


def scrape(url: str, **headers: str) -> str:
    answer = requests.get(f"{url}/-/metrics", headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.text


def test_prometheus_reads_loads_hit_rate_and_load_latency(serve_instance, prometheus):
    serve.run(Slow.bind())
    url = serve_instance.url
    # A first load makes the series exist, and Prometheus sees them before the measured loads,
    # so rate() has a sample on each side.
    assert requests.get(url, headers={H: "warm"}).text == "warm"
    wait_until(lambda: prometheus.query("sum(modelplex_multiplexed_models_load_counter_total)") == 1,
               timeout=15, interval=0.2, message="prometheus never scraped the first load")
    time.sleep(1.2)
    for model in ("a", "b", "c", "d"):  # 4 loads (misses), then 3 hits each
        for _ in range(4):
            assert requests.get(url, headers={H: model}).text == model

    def settled() -> bool:
        return prometheus.query("sum(modelplex_multiplexed_cache_hits_total)") == 12

    wait_until(settled, timeout=15, interval=0.2, message="prometheus never saw the 12 hits")
    assert prometheus.query("sum(modelplex_multiplexed_models_load_counter_total)") == 5
    hit_rate = prometheus.query(
        "sum(modelplex_multiplexed_cache_hits_total) / (sum(modelplex_multiplexed_cache_hits_total)"
        " + sum(modelplex_multiplexed_cache_misses_total))"
    )
    assert hit_rate == pytest.approx(12 / 17)
    p50 = prometheus.query(
        "histogram_quantile(0.5, sum by (le) "
        "(rate(modelplex_multiplexed_model_load_latency_ms_bucket[1m])))"
    )
    assert p50 == pytest.approx(250, abs=1), p50  # all in (200, 300]: interpolated midway
    requests_by_route = prometheus.query(
        'sum(modelplex_num_http_requests_total{route="/",application="default",status_code="200"})'
    )
    assert requests_by_route == 17
    assert prometheus.query('sum(modelplex_deployment_replica_healthy{deployment="Slow"})') == 1


def test_ten_thousand_model_ids_make_a_bounded_number_of_series(serve_instance):
    handle = serve.run(Instant.bind())
    ids = [f"model-{i}" for i in range(10_000)]
    for start in range(0, len(ids), 250):
        calls = [handle.options(multiplexed_model_id=m).call.remote() for m in ids[start:start + 250]]
        assert [c.result() for c in calls] == ids[start:start + 250]
    for _ in range(5):  # two busy models among them
        handle.options(multiplexed_model_id="model-9999").call.remote().result()
    def by_model(families: dict) -> list:
        return [s for s in families["modelplex_multiplexed_model_requests"].samples
                if s.name.endswith("_total")]

    def all_counted() -> dict | None:  # each replica publishes within _obs/folder.PUBLISH_S
        families = {f.name: f for f in text_string_to_metric_families(scrape(serve_instance.url))}
        found = "modelplex_multiplexed_model_requests" in families
        return families if found and sum(s.value for s in by_model(families)) == 10_005 else None

    families = wait_until(all_counted, timeout=10, message="the replicas' counts never arrived")
    requests_by_model = by_model(families)
    labels = {s.labels["model_id"] for s in requests_by_model}
    top = 50  # MODELPLEX_METRICS_TOP_MODELS' default
    assert "__other__" in labels and "model-9999" in labels
    assert len(labels) <= 2 * top + 1
    assert sum(s.value for s in requests_by_model) == 10_005
    total = sum(len(f.samples) for f in families.values())
    assert total < 600, total  # the whole scrape, every family: not 10,000 of anything
    print(f"series after 10,000 ids: {total} samples in the scrape; "
          f"{len(labels)} model_id labels")


def test_metrics_obey_the_management_token():
    port = free_port()
    serve.start(http_options={"port": port, "management_token": "s3cret"})
    try:
        url = f"http://127.0.0.1:{port}"
        assert requests.get(f"{url}/-/metrics").status_code == 401
        scrape(url, Authorization="Bearer s3cret")
    finally:
        serve.shutdown()
    serve.start(http_options={"port": port, "management_routes": False})
    try:
        assert requests.get(f"http://127.0.0.1:{port}/-/metrics").status_code == 404
    finally:
        serve.shutdown()


def test_metrics_off_serve_no_route(monkeypatch):
    monkeypatch.setenv("MODELPLEX_METRICS", "0")
    port = free_port()
    serve.start(http_options={"port": port})
    try:
        assert requests.get(f"http://127.0.0.1:{port}/-/metrics").status_code == 404
        assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    finally:
        serve.shutdown()
