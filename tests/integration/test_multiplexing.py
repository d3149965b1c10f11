"""The seed's multiplexing behaviours, end to end: real replica processes, real HTTP."""

from __future__ import annotations

import concurrent.futures
import os
import time

import requests

import modelplex as serve

from ..conftest import wait_until
from .models import make_recorder, read_events

H = "serve_multiplexed_model_id"


def get(url: str, model_id: str | None = None, header: str = H, **params) -> requests.Response:
    headers = {header: model_id} if model_id is not None else {}
    return requests.get(url, headers=headers, params=params, timeout=60)


def test_lru_order_and_del_on_eviction(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    serve.run(make_recorder(capacity=2).bind(events))
    for model_id in ["1", "2", "1", "3"]:
        resp = get(serve_instance.url, model_id)
        assert resp.status_code == 200, resp.text
        assert resp.json()["model_id"] == model_id
    wait_until(lambda: "del 2" in read_events(events), message="model 2 was not unloaded")
    # 1 and 3 are still loaded: asking for them loads nothing new.
    for model_id in ["1", "3"]:
        assert get(serve_instance.url, model_id).status_code == 200
    assert read_events(events) == ["load 1", "load 2", "load 3", "del 2"]


def test_del_runs_on_redeploy_and_shutdown(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    deployment = make_recorder(capacity=3)
    serve.run(deployment.bind(events))
    assert get(serve_instance.url, "a").status_code == 200
    serve.run(deployment.bind(events))  # same name: replaces the application
    assert "del a" in read_events(events)
    assert get(serve_instance.url, "b").json()["model_id"] == "b"
    serve.shutdown()
    assert read_events(events) == ["load a", "del a", "load b", "del b"]


def test_model_in_use_survives_its_eviction(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    serve.run(make_recorder(capacity=1).options(max_ongoing_requests=10).bind(events))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(get, serve_instance.url, "1", hold="1.5")
        wait_until(lambda: "using 1" in read_events(events))
        assert get(serve_instance.url, "2").status_code == 200
        # Model 1 was evicted by 2's load but is still used by the slow request.
        assert "del 1" not in read_events(events)
        resp = slow.result()
    assert resp.json() == {"model_id": "1", "pid": resp.json()["pid"], "alive": True}
    wait_until(lambda: "del 1" in read_events(events), message="model 1 never unloaded")


def test_loads_of_distinct_models_run_concurrently(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    serve.run(make_recorder(capacity=4).options(max_ongoing_requests=8).bind(events, load_s=1.0))
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda m: get(serve_instance.url, m), ["1", "2", "3", "4"]))
    elapsed = time.monotonic() - start
    assert [r.status_code for r in results] == [200] * 4
    assert elapsed < 2.5, f"four 1 s loads took {elapsed:.2f}s: they ran one after another"


def test_sync_loader_runs_in_a_thread(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    serve.run(make_recorder(capacity=4, sync_loader=True).options(max_ongoing_requests=8).bind(events, load_s=1.0))
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda m: get(serve_instance.url, m), ["1", "2", "3"]))
    assert [r.json()["model_id"] for r in results] == ["1", "2", "3"]
    assert time.monotonic() - start < 2.5


def test_failed_load_leaves_cache_as_it_was(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    serve.run(make_recorder(capacity=2).bind(events, fail=("bad",)))
    assert get(serve_instance.url, "1").status_code == 200
    assert get(serve_instance.url, "2").status_code == 200
    resp = get(serve_instance.url, "bad")
    assert resp.status_code == 500
    assert "RuntimeError: cannot load model bad" in resp.text
    assert get(serve_instance.url, "1").status_code == 200
    assert get(serve_instance.url, "2").status_code == 200
    # Nothing was evicted, and the next request for the bad model tries the loader again.
    assert get(serve_instance.url, "bad").status_code == 500
    assert read_events(events) == ["load 1", "load 2", "load bad", "load bad"]


def test_same_model_hits_same_replica(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    serve.run(make_recorder(capacity=2).options(num_replicas=2).bind(events))
    for model_id in ["1", "2", "3"]:
        pids = {get(serve_instance.url, model_id).json()["pid"] for _ in range(10)}
        assert len(pids) == 1, f"model {model_id} went to replicas {pids}"
    assert sorted(read_events(events)) == ["load 1", "load 2", "load 3"]


def test_saturated_holder_spills_to_another_replica(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    serve.run(
        make_recorder(capacity=2).options(num_replicas=2, max_ongoing_requests=1).bind(events)
    )
    assert get(serve_instance.url, "1").status_code == 200  # warm: a fast load on one replica
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: get(serve_instance.url, "1", hold="1.0"), range(2)))
    pids = {r.json()["pid"] for r in results}
    assert len(pids) == 2, "the second request waited for the busy holder instead of spilling"


def test_burst_of_cold_requests_loads_once(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    # Room for the whole burst: this is about cold placement, not about spilling a busy holder.
    recorder = make_recorder(capacity=2).options(num_replicas=2, max_ongoing_requests=64)
    serve.run(recorder.bind(events, load_s=0.5))
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: get(serve_instance.url, "cold"), range(20)))
    assert [r.status_code for r in results] == [200] * 20
    assert read_events(events) == ["load cold"]


def test_request_without_header_goes_to_any_replica(serve_instance):
    @serve.deployment(num_replicas=2)
    class Plain:
        def __call__(self, request):
            return {"model_id": serve.get_multiplexed_model_id(), "pid": os.getpid()}

    serve.run(Plain.bind())
    pids = set()
    for _ in range(30):
        resp = get(serve_instance.url)
        assert resp.json()["model_id"] == ""
        pids.add(resp.json()["pid"])
    assert len(pids) == 2


def test_header_spellings(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    serve.run(make_recorder().bind(events))
    for header in [H, "serve-multiplexed-model-id", "Serve-Multiplexed-Model-Id", H.upper()]:
        resp = get(serve_instance.url, "7", header=header)
        assert resp.json()["model_id"] == "7", header


def test_missing_model_id_is_a_clear_400(serve_instance, tmp_path):
    serve.run(make_recorder().bind(str(tmp_path / "events")))
    resp = get(serve_instance.url)
    assert resp.status_code == 400
    assert "serve_multiplexed_model_id" in resp.text


def test_handle_selects_model_and_method(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    handle = serve.run(make_recorder().bind(events))
    out = handle.options(multiplexed_model_id="1", method_name="infer").remote(5).result()
    assert out["model_id"] == "1" and out["x"] == 5
    out = handle.options(multiplexed_model_id="2").infer.remote(x=6).result(timeout_s=30)
    assert out["model_id"] == "2" and out["x"] == 6
    assert isinstance(handle.pid.remote().result(), int)
