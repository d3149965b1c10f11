"""Tenants end to end: real replica processes, real HTTP, real handles.

A quiet model id is served ahead of another id's flood; one id's backlog past its bound is
answered 429 naming it (a handle raises ``BackPressureError`` with ``model_id``); one id's
``max_ongoing_requests_per_model`` holds across two replicas and two routers. The tests that
take ``serve_instance`` run on Ray too (tests/ray/test_core_on_ray.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import time

import pytest
import requests

import modelplex as serve
from modelplex._control.status import render
from modelplex._types import status_dict

from ..conftest import ROOT, wait_until

H = "serve_multiplexed_model_id"


def make_tenants(**options):
    """A multiplexed deployment whose requests hold their slot for ``?hold=`` seconds and
    write when they ran (``start``/``end`` lines) to ``events``. Every model fits."""

    @serve.deployment(ray_actor_options={"num_cpus": 0}, **options)
    class Tenants:
        def __init__(self, events: str = "") -> None:
            self.events = events

        @serve.multiplexed(max_num_models_per_replica=16)
        async def get_model(self, model_id: str) -> str:
            return model_id

        async def __call__(self, request) -> dict:
            params = request.query_params
            return await self.call(float(params.get("hold", "0")), params.get("tag", "-"))

        async def call(self, hold: float, tag: str = "-") -> dict:
            model_id = await self.get_model(serve.get_multiplexed_model_id())
            self.mark("start", model_id, tag)
            await asyncio.sleep(hold)
            self.mark("end", model_id, tag)
            return {"model_id": model_id, "pid": os.getpid(), "done": time.time()}

        def mark(self, kind: str, model_id: str, tag: str) -> None:
            if self.events:
                with open(self.events, "a") as f:
                    f.write(f"{time.time():.6f} {kind} {model_id} {tag}\n")

    return Tenants


def get(url: str, model_id: str, hold: float, tag: str = "-") -> requests.Response:
    return requests.get(url, headers={H: model_id}, params={"hold": hold, "tag": tag}, timeout=120)


def queued(model_id: str) -> int:
    for app in serve.status().applications.values():
        for deployment in app.deployments.values():
            if model_id in deployment.longest_queues:
                return deployment.longest_queues[model_id]
    return 0


def test_a_quiet_model_is_served_ahead_of_a_flood(serve_instance):
    """4 slots, 40 noisy requests of 0.3 s queued (3 s of backlog); a quiet request that
    arrives behind them all gets the next free slot, and status names the flood's queue."""
    serve.run(make_tenants(num_replicas=2, max_ongoing_requests=2).bind())
    url = serve_instance.url
    assert get(url, "noisy", 0).status_code == 200 and get(url, "quiet", 0).status_code == 200
    with concurrent.futures.ThreadPoolExecutor(41) as pool:
        flood = [pool.submit(get, url, "noisy", 0.3) for _ in range(40)]
        wait_until(lambda: queued("noisy") >= 30, timeout=30, message="the flood never queued")
        text = render(status_dict(serve.status()))
        assert "longest queues: noisy" in text, text
        sent = time.time()
        quiet = get(url, "quiet", 0.3)
        answered = time.time()
        noisy = [f.result() for f in flood]
    assert quiet.status_code == 200 and all(r.status_code == 200 for r in noisy)
    behind = sum(r.json()["done"] < answered for r in noisy)
    assert behind < 20, f"{behind} of the 40 noisy requests went first"  # FIFO: all of them
    assert answered - sent < 1.5  # a slot frees every 75 ms or so; the whole flood takes 3 s


def test_a_models_backlog_past_its_bound_is_refused_with_429_naming_it(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    serve.run(make_tenants(num_replicas=1, max_ongoing_requests=1,
                           max_queued_requests_per_model=3).bind(events))
    url = serve_instance.url
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        first = pool.submit(get, url, "noisy", 1.5)  # runs
        wait_until(lambda: running(events, "noisy") == 1, timeout=10)
        waiting = [pool.submit(get, url, "noisy", 0.0) for _ in range(3)]  # the backlog's room
        wait_until(lambda: queued("noisy") == 3, timeout=10)
        refused = get(url, "noisy", 0.0)
        handle = serve.get_app_handle().options(multiplexed_model_id="noisy")
        with pytest.raises(serve.BackPressureError) as info:
            handle.call.remote(0.0).result()
        other = pool.submit(get, url, "quiet", 0.0)  # another id is not refused
        answers = [first.result(), *(w.result() for w in waiting), other.result()]
    assert refused.status_code == 429, refused.text
    assert "Model 'noisy'" in refused.text and "max_queued_requests_per_model" in refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    assert (info.value.model_id, info.value.limit) == ("noisy", 3)
    assert [r.status_code for r in answers] == [200] * 5
    metrics = requests.get(f"{url}/-/metrics", timeout=10).text
    shed = [line for line in metrics.splitlines()
            if line.startswith("modelplex_deployment_shed_requests_total")
            and 'model_id="noisy"' in line and 'reason="model_queue"' in line]
    assert shed and float(shed[0].rsplit(" ", 1)[1]) >= 2, shed


def marks(events: str, model_id: str) -> list[tuple[float, str, str]]:
    """(time, "start" or "end", tag) of ``model_id``'s requests, as the replicas wrote them."""
    try:
        with open(events) as f:
            lines = [line.split() for line in f]
    except FileNotFoundError:
        return []
    return sorted((float(t), kind, tag) for t, kind, m, tag in lines if m == model_id)


def overlap(events: str, model_id: str) -> int:
    """The most requests of ``model_id`` that ran at once."""
    running = peak = 0
    for _, kind, _ in marks(events, model_id):
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    return peak


def running(events: str, model_id: str) -> int:
    return sum(1 if kind == "start" else -1 for _, kind, _ in marks(events, model_id))


def test_the_per_model_cap_holds_across_two_replicas_and_two_routers(serve_instance, tmp_path):
    """Cap 3 over two replicas of two slots each. The HTTP proxy's router runs 3 at once on
    both replicas together, never 4; a second router (a handle in another replica's process)
    hears from the replicas what the first runs, and starts nothing until one ends."""
    events = str(tmp_path / "events")
    Tenants = make_tenants(num_replicas=2, max_ongoing_requests=2,
                           max_ongoing_requests_per_model=3)

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Front:
        async def __call__(self, request) -> list:
            n, hold = int(request.query_params["n"]), float(request.query_params["hold"])
            handle = serve.get_deployment_handle("Tenants", "tenants")
            handle = handle.options(multiplexed_model_id="m")
            return [await c for c in [handle.call.remote(hold, "front") for _ in range(n)]]

    serve.run(Tenants.bind(events), name="tenants", route_prefix="/tenants")
    serve.run(Front.bind(), name="front", route_prefix="/front")
    base = serve_instance.url
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        proxied = [pool.submit(get, f"{base}/tenants", "m", 0.3) for _ in range(9)]
        answers = [f.result() for f in proxied]
        assert [r.status_code for r in answers] == [200] * 9
        assert overlap(events, "m") == 3  # one router: the cap, exactly, over both replicas
        assert len({r.json()["pid"] for r in answers}) == 2
        warm = requests.get(f"{base}/front", params={"n": 1, "hold": 0}, timeout=60)
        assert warm.status_code == 200  # the second router is connected and told
        first = [pool.submit(get, f"{base}/tenants", "m", 1.0, "proxy") for _ in range(3)]
        wait_until(lambda: running(events, "m") == 3, timeout=10)
        front = pool.submit(requests.get, f"{base}/front", params={"n": 6, "hold": 0.2},
                            timeout=60)
        assert front.result().status_code == 200 and len(front.result().json()) == 6
        assert all(f.result().status_code == 200 for f in first)
    seen = marks(events, "m")
    proxy_start = min(t for t, kind, tag in seen if kind == "start" and tag == "proxy")
    first_end = min(t for t, kind, tag in seen if kind == "end" and tag == "proxy")
    front_start = min(t for t, kind, tag in seen if kind == "start" and tag == "front"
                      and t > proxy_start)  # not the warm-up call
    assert front_start >= first_end - 0.005, (front_start, first_end)
    assert overlap(events, "m") == 3


def test_the_tenants_doc_example_runs(serve_instance, capsys):
    text = open(os.path.join(ROOT, "docs", "multiplexing.md")).read()
    _, block = re.findall(r"```python\n(.*?)```", text, re.S)
    exec(compile(block, "docs/multiplexing.md", "exec"), {"__name__": "docs"})
    assert capsys.readouterr().out.strip() == "{'gold-tenant': 8.0, 'silver-tenant': 2.0}"
    r = requests.get(serve_instance.url, headers={H: "gold-tenant"}, timeout=30)
    assert (r.status_code, r.text) == (200, "adapter gold-tenant")
