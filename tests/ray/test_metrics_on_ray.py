"""Metrics on the Ray backend: the driver's proxy serves what replica actors on its node wrote."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

import modelplex as serve

from ..conftest import wait_until

H = "serve_multiplexed_model_id"


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.5})
class Models:
    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> str:
        return model_id

    async def __call__(self, request) -> str:
        return await self.get_model(serve.get_multiplexed_model_id())


def test_driver_proxy_serves_the_replica_actors_metrics(serve_instance):
    serve.run(Models.bind())
    for i in range(12):
        assert requests.get(serve_instance.url, headers={H: str(i % 3)}).text == str(i % 3)

    def scrape() -> list:
        text = requests.get(f"{serve_instance.url}/-/metrics", timeout=10).text
        return [s for f in text_string_to_metric_families(text) for s in f.samples]

    def total(name: str) -> float:
        return sum(s.value for s in samples if s.name == name)

    # Each replica publishes its figures within _obs/folder.PUBLISH_S.
    samples = wait_until(lambda: (lambda got: got if sum(
        s.value for s in got if s.name == "modelplex_deployment_request_counter_total") == 12
        else None)(scrape()), timeout=10, message="the replicas' request counts never arrived")

    assert total("modelplex_multiplexed_get_model_requests_counter_total") == 12
    assert total("modelplex_multiplexed_cache_hits_total") + total(
        "modelplex_multiplexed_cache_misses_total") == 12
    assert total("modelplex_num_http_requests_total") >= 12
    replicas = {s.labels["replica"] for s in samples
                if s.name == "modelplex_deployment_replica_starts_total"}
    assert len(replicas) == 2  # both actors wrote to this node's folder
