"""Autoscaling with real replicas: up under load, down when idle, to zero and back, and a
scale-down that hands its hot models to the survivor first."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os

import requests

import modelplex as serve
from modelplex._messages import DeploymentID
from modelplex._driver.runtime import current_runtime

from ..conftest import wait_until
from .models import read_events, record

FAST = dict(
    upscale_delay_s=0.0, downscale_delay_s=1.0, look_back_period_s=1.0, metrics_interval_s=0.5,
    target_ongoing_requests=1,
)


@serve.deployment(max_ongoing_requests=4)
class Napper:
    def __init__(self, events: str = "") -> None:
        self.events = events

    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> str:
        if self.events:
            record(self.events, f"load {model_id} {os.getpid()}")
        await asyncio.sleep(0.3)
        return model_id

    async def __call__(self, request):
        model_id = serve.get_multiplexed_model_id()
        if model_id:
            await self.get_model(model_id)
        await asyncio.sleep(float(request.query_params.get("s", "0")))
        return os.getpid()


def replicas(app: str = "default", name: str = "Napper") -> int:
    runtime = current_runtime()
    return len(runtime.controller.replica_set(DeploymentID(app, name)).replicas)


def test_scales_up_under_load_and_back_down_when_idle(serve_instance, caplog):
    caplog.set_level(logging.INFO, logger="modelplex")
    serve.run(Napper.options(autoscaling_config=dict(min_replicas=1, max_replicas=3, **FAST)).bind())
    assert replicas() == 1
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        busy = [pool.submit(requests.get, serve_instance.url, params={"s": "3"}) for _ in range(8)]
        wait_until(lambda: replicas() == 3, timeout=20, message="never scaled up to 3")
        assert all(f.result().status_code == 200 for f in busy)
    wait_until(lambda: replicas() == 1, timeout=30, message="never scaled back down")
    lines = [r.getMessage() for r in caplog.records]
    assert any("scale 1→" in line and "ongoing >" in line for line in lines), lines
    assert any("→1:" in line for line in lines), lines


def test_scales_to_zero_and_serves_the_first_request_after(serve_instance):
    serve.run(
        Napper.options(
            autoscaling_config=dict(min_replicas=0, max_replicas=2, **{**FAST, "downscale_delay_s": 0.5})
        ).bind()
    )
    assert replicas() == 0  # nothing runs until a request comes
    answer = requests.get(serve_instance.url, timeout=60)  # queues at the proxy meanwhile
    assert answer.status_code == 200
    wait_until(lambda: replicas() == 0, timeout=30, message="never scaled back to zero")
    assert requests.get(serve_instance.url, timeout=60).status_code == 200


def test_a_scale_down_hands_hot_models_to_the_survivor_first(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    config = dict(min_replicas=1, max_replicas=2, initial_replicas=2, **{**FAST, "downscale_delay_s": 4.0})
    serve.run(Napper.options(autoscaling_config=config).bind(events))
    assert replicas() == 2
    # Two hot models, one on each replica (rendezvous homes), kept warm by steady traffic.
    pids = {}
    models = [m for m in ("a", "b", "c", "d", "e", "f")]
    for model_id in models:
        pids[model_id] = requests.get(
            serve_instance.url, headers={"serve_multiplexed_model_id": model_id}
        ).json()
    hot = [next(m for m in models if pids[m] == pid) for pid in sorted(set(pids.values()))][:2]
    assert len(hot) == 2

    def traffic_until_one_replica():
        while replicas() > 1:
            for model_id in hot:
                requests.get(serve_instance.url, headers={"serve_multiplexed_model_id": model_id})

    traffic_until_one_replica()
    loads_before = [e for e in read_events(events) if e.startswith("load")]
    survivor = requests.get(serve_instance.url, headers={"serve_multiplexed_model_id": hot[0]}).json()
    for model_id in hot:
        assert requests.get(
            serve_instance.url, headers={"serve_multiplexed_model_id": model_id}
        ).json() == survivor
    loads = [e for e in read_events(events) if e.startswith("load")]
    # Both hot models are on the survivor, loaded before the other replica stopped: no request
    # after the scale-down paid a load.
    assert loads == loads_before
    assert {f"load {m} {survivor}" for m in hot} <= set(loads)
