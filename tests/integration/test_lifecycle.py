"""A deployment's life with real replica processes: reconfigure(), check_health() and a
graceful stop that lets requests in flight finish before models are unloaded."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
import requests

import modelplex as serve
from modelplex import DeploymentFailedError

from ..conftest import wait_until
from .models import TrackedModel, read_events, record


@serve.deployment(user_config={"greeting": "hello"})
class Configured:
    def __init__(self, events: str) -> None:
        self.events = events
        self.greeting = None

    async def reconfigure(self, config: dict) -> None:
        if config.get("greeting") == "bad":
            raise ValueError("greeting must not be 'bad'")
        await asyncio.sleep(0)
        self.greeting = config["greeting"]
        record(self.events, f"reconfigure {self.greeting}")

    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> TrackedModel:
        record(self.events, f"load {model_id}")
        return TrackedModel(model_id, self.events)

    async def __call__(self, request) -> dict:
        model = await self.get_model(serve.get_multiplexed_model_id())
        return {"greeting": self.greeting, "model": model.model_id, "pid": os.getpid()}


def test_user_config_reaches_reconfigure_and_changes_in_place(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    serve.run(Configured.bind(events))
    ask = lambda: requests.get(serve_instance.url, headers={"serve_multiplexed_model_id": "m1"}).json()
    first = ask()
    assert first["greeting"] == "hello"  # reconfigure ran before the first request
    assert read_events(events) == ["reconfigure hello", "load m1"]

    serve.run(Configured.options(user_config={"greeting": "hi"}).bind(events))
    assert ask() == {**first, "greeting": "hi"}  # the same process, its model still loaded
    assert read_events(events) == ["reconfigure hello", "load m1", "reconfigure hi"]

    with pytest.raises(DeploymentFailedError, match="ValueError: greeting must not be 'bad'"):
        serve.run(Configured.options(user_config={"greeting": "bad"}).bind(events))
    assert ask() == {**first, "greeting": "hi"}  # the previous config kept, nothing restarted
    assert "del m1" not in read_events(events)


def test_user_config_must_be_json_serializable():
    with pytest.raises(ValueError, match="user_config is not JSON-serializable"):
        Configured.options(user_config={"x": object()})


@serve.deployment(health_check_period_s=0.1, health_check_timeout_s=2)
class Fragile:
    def __init__(self, flag: str) -> None:
        self.flag = flag

    def check_health(self) -> None:
        if os.path.exists(self.flag) and open(self.flag).read() == str(os.getpid()):
            raise RuntimeError("lost the device")

    def __call__(self, request) -> int:
        return os.getpid()


def test_a_replica_whose_check_health_raises_is_replaced(serve_instance, tmp_path):
    flag = tmp_path / "sick"
    serve.run(Fragile.bind(str(flag)))
    pid = requests.get(serve_instance.url).json()
    flag.write_text(str(pid))  # this replica's checks raise from now on

    def replaced():
        try:
            return requests.get(serve_instance.url, timeout=5).json() != pid
        except requests.RequestException:
            return False

    wait_until(replaced, timeout=20, message="the unhealthy replica was not replaced")


@serve.deployment(graceful_shutdown_wait_loop_s=0.1, graceful_shutdown_timeout_s=10)
class Slow:
    def __init__(self, events: str, version: str) -> None:
        self.events = events
        self.version = version

    @serve.multiplexed(max_num_models_per_replica=1)
    async def get_model(self, model_id: str) -> TrackedModel:
        return TrackedModel(f"{model_id}@{self.version}", self.events)

    async def __call__(self, request) -> str:
        model = await self.get_model(serve.get_multiplexed_model_id())
        record(self.events, f"started {model.model_id}")
        await asyncio.sleep(float(request.query_params.get("s", "0")))
        record(self.events, f"done {model.model_id}")
        return self.version


def test_a_request_in_flight_finishes_before_a_redeploy_unloads_its_model(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    serve.run(Slow.bind(events, "v1"))
    answer = {}

    def long_request():
        answer["r"] = requests.get(
            serve_instance.url, params={"s": "1.5"}, headers={"serve_multiplexed_model_id": "m"}
        )

    thread = threading.Thread(target=long_request)
    thread.start()
    wait_until(lambda: "started m@v1" in read_events(events))
    serve.run(Slow.bind(events, "v2"))  # a rollout: v1's replica stops once its request ends
    thread.join(10)
    assert answer["r"].status_code == 200 and answer["r"].text == "v1"
    wait_until(lambda: "del m@v1" in read_events(events), message="v1's model was never unloaded")
    seen = read_events(events)
    assert seen.index("done m@v1") < seen.index("del m@v1")


def test_the_deployments_own_del_runs_once_when_its_replica_stops(serve_instance, tmp_path):
    """As Ray Serve does on a graceful stop: after the models are unloaded."""
    events = str(tmp_path / "events")

    @serve.deployment
    class Finalized:
        def __init__(self, path: str) -> None:
            self.path = path

        @serve.multiplexed(max_num_models_per_replica=1)
        async def get_model(self, model_id: str):
            return _Recorded(self.path, model_id)

        async def __call__(self, request):
            await self.get_model(serve.get_multiplexed_model_id())
            return "ok"

        def __del__(self) -> None:
            with open(self.path, "a") as f:
                f.write("deployment del\n")

    serve.run(Finalized.bind(events))
    assert requests.get(serve_instance.url, headers={"serve_multiplexed_model_id": "m"}).text == "ok"
    serve.delete("default")
    with open(events) as f:
        assert f.read().splitlines() == ["model del m", "deployment del"]


class _Recorded:
    def __init__(self, path: str, model_id: str) -> None:
        self.path, self.model_id = path, model_id

    def __del__(self) -> None:
        with open(self.path, "a") as f:
            f.write(f"model del {self.model_id}\n")


@serve.deployment(num_replicas=2)
class Introspective:
    def __init__(self) -> None:
        context = serve.get_replica_context()  # in the constructor too, as in Ray
        self.seen_in_init = (context.app_name, context.deployment, context.servable_object)

    def __call__(self, request) -> dict:
        context = serve.get_replica_context()
        return {
            "init": [self.seen_in_init[0], self.seen_in_init[1], self.seen_in_init[2] is None],
            "tag": context.replica_tag,
            "same": context.replica_id.unique_id == context.replica_tag,
            "app": context.replica_id.deployment_id.app_name,
            "me": context.servable_object is self,
        }


def test_get_replica_context_names_the_replica(serve_instance):
    serve.run(Introspective.bind(), name="ctx", route_prefix="/ctx")
    answers = [requests.get(serve_instance.url + "/ctx", timeout=30).json() for _ in range(20)]
    replicas = serve.status().applications["ctx"].deployments["Introspective"].replicas
    assert {a["tag"] for a in answers} <= {r.replica_id for r in replicas}
    assert all(a["init"] == ["ctx", "Introspective", True] and a["same"] and a["me"]
               and a["app"] == "ctx" for a in answers)
    with pytest.raises(RuntimeError, match="only be called from within"):
        serve.get_replica_context()
