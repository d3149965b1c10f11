"""Beyond Ray Serve: model management, live resizing, byte budgets and placement."""

from __future__ import annotations

import asyncio
import concurrent.futures

import pytest
import requests

import modelplex as serve
from modelplex import DeploymentHandle

from ..conftest import wait_until
from .models import TrackedModel, make_recorder, read_events

H = "serve_multiplexed_model_id"


def loaded(app: str = "default", deployment: str | None = None) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for status in serve.list_models(app, deployment):
        if status.state == "loaded":
            out.setdefault(status.model_id, set()).add(status.replica_id)
    return out


def test_preload_pin_unpin_unload(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    serve.run(make_recorder(capacity=2).options(num_replicas=2).bind(events))
    replicas = serve.preload_model("a", num_replicas=2)
    assert len(set(replicas)) == 2
    assert loaded() == {"a": set(replicas)}
    # Preloaded where routing looks: requests for "a" load nothing more.
    for _ in range(4):
        assert requests.get(serve_instance.url, headers={H: "a"}).status_code == 200
    assert read_events(events).count("load a") == 2

    [home] = serve.pin_model("p")
    for model_id in ["x", "y", "z"]:  # push every replica's cache past its capacity
        serve.preload_model(model_id, num_replicas=2)
    now = loaded()
    assert now["p"] == {home}, "the pinned model was evicted"
    pinned = [s for s in serve.list_models() if s.pinned]
    assert [(s.model_id, s.replica_id) for s in pinned] == [("p", home)]

    assert serve.unpin_model("p") == [home]
    assert not any(s.pinned for s in serve.list_models())
    holders = sorted(loaded()["z"])
    assert serve.unload_model("z") == holders
    assert "z" not in loaded()
    wait_until(lambda: read_events(events).count("del z") == 2)


def test_configure_shrinks_a_running_cache(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    handle = serve.run(make_recorder(capacity=4).bind(events))
    pid = handle.pid.remote().result()
    for model_id in ["1", "2", "3", "4"]:
        requests.get(serve_instance.url, headers={H: model_id})
    assert set(loaded()) == {"1", "2", "3", "4"}
    serve.configure_multiplexing(max_num_models_per_replica=2)
    assert set(loaded()) == {"3", "4"}  # the two least recently used went
    wait_until(lambda: {"del 1", "del 2"} <= set(read_events(events)))
    assert handle.pid.remote().result() == pid  # no restart
    with pytest.raises(ValueError, match="max_num_models_per_replica"):
        serve.configure_multiplexing(max_num_models_per_replica=0)


def test_management_over_http(serve_instance, tmp_path):
    serve.run(make_recorder(capacity=2).bind(str(tmp_path / "events")))
    base = serve_instance.url + "/-/models"
    r = requests.post(base + "/preload", json={"model_id": "m1"})
    assert r.status_code == 200 and len(r.json()["replicas"]) == 1
    listing = requests.get(base).json()
    assert [(m["model_id"], m["state"]) for m in listing] == [("m1", "loaded")]
    assert requests.post(base + "/pin", json={"model_id": "m1"}).status_code == 200
    assert requests.get(base).json()[0]["pinned"] is True
    assert requests.post(base + "/unload", json={"model_id": "m1"}).json()["replicas"]
    assert requests.get(base).json() == []
    assert requests.post(base + "/preload", json={}).status_code == 400
    assert requests.post(base + "/preload", json={"model_id": "m", "app": "nope"}).status_code == 404
    assert requests.post(base + "/explode", json={}).status_code == 404
    r = requests.post(base + "/configure", json={"max_num_models_per_replica": -7})
    assert r.status_code == 400


class SizedModel(TrackedModel):
    def __init__(self, model_id: str, events: str) -> None:
        super().__init__(model_id, events)
        self.nbytes = int(model_id.split("-")[1])


@serve.deployment
class Sized:
    def __init__(self, events: str) -> None:
        self.events = events

    @serve.multiplexed(max_num_models_per_replica=10, max_memory_bytes=1000)
    async def get_model(self, model_id: str) -> SizedModel:
        return SizedModel(model_id, self.events)

    async def __call__(self, request):
        model = await self.get_model(serve.get_multiplexed_model_id())
        return model.model_id


def test_byte_budget_evicts_until_the_new_model_fits(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    serve.run(Sized.bind(events))
    for model_id in ["a-400", "b-400", "c-400"]:
        assert requests.get(serve_instance.url, headers={H: model_id}).status_code == 200
    assert set(loaded()) == {"b-400", "c-400"}
    sizes = {s.model_id: s.size_bytes for s in serve.list_models()}
    assert sizes == {"b-400": 400, "c-400": 400}
    r = requests.get(serve_instance.url, headers={H: "huge-5000"})
    assert r.status_code == 507 and "huge-5000" in r.text and "1000" in r.text
    assert set(loaded()) == {"b-400", "c-400"}  # the refusal evicted nothing


def test_hot_model_limited_to_one_replica_does_not_spread(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    serve.run(
        make_recorder(capacity=2)
        .options(num_replicas=2, max_ongoing_requests=1, max_replicas_per_model=1)
        .bind(events)
    )
    # A fresh router gets the whole burst at once: every request is placed from its queue.
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(
            pool.map(
                lambda _: requests.get(serve_instance.url, headers={H: "hot"}, params={"hold": "0.3"}),
                range(6),
            )
        )
    assert len({r.json()["pid"] for r in results}) == 1
    assert read_events(events).count("load hot") == 1


@serve.deployment
class FanOut:
    """A second router: handle calls from inside a replica of another application."""

    def __init__(self) -> None:
        self.target = DeploymentHandle("Recorder", "rec").options(multiplexed_model_id="cold")

    async def __call__(self, request):
        results = await asyncio.gather(*(self.target.infer.remote(i) for i in range(20)))
        return sorted({r["pid"] for r in results})


def test_two_routers_load_a_cold_model_once(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    serve.run(
        make_recorder(capacity=2).options(num_replicas=2, max_ongoing_requests=64).bind(
            events, load_s=0.5
        ),
        name="rec",
        route_prefix="/rec",
    )
    serve.run(FanOut.bind(), name="fan", route_prefix="/fan")
    with concurrent.futures.ThreadPoolExecutor(21) as pool:
        fan = pool.submit(requests.get, serve_instance.url + "/fan")
        direct = list(
            pool.map(lambda _: requests.get(serve_instance.url + "/rec", headers={H: "cold"}), range(20))
        )
        assert fan.result().status_code == 200, fan.result().text
    assert [r.status_code for r in direct] == [200] * 20
    assert read_events(events) == ["load cold"]
    assert len({r.json()["pid"] for r in direct} | set(fan.result().json())) == 1


@serve.deployment
class Frequent:
    @serve.multiplexed(max_num_models_per_replica=1, eviction_policy="tinylfu")
    async def get_model(self, model_id: str) -> str:
        return model_id

    async def __call__(self, request):
        return await self.get_model(serve.get_multiplexed_model_id())


def test_tinylfu_keeps_the_hot_model_and_pins_override_it(serve_instance):
    serve.run(Frequent.bind())
    for _ in range(5):
        assert requests.get(serve_instance.url, headers={H: "hot"}).text == "hot"
    assert requests.get(serve_instance.url, headers={H: "once"}).text == "once"  # served...
    assert set(loaded()) == {"hot"}  # ...but not kept in place of the hot model
    serve.pin_model("once")  # an operator's choice beats the request counts
    assert {(s.model_id, s.pinned) for s in serve.list_models()} == {("once", True)}


@serve.deployment
class PickyLoader:
    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> str:
        if model_id == "bad":
            raise ValueError("no weights for 'bad'")
        if model_id == "typo":
            raise TypeError("loader got confused")
        return model_id

    async def __call__(self, request):
        return await self.get_model(serve.get_multiplexed_model_id())


@serve.deployment
class NoLoader:
    def __call__(self, request):
        return "plain"


def test_management_errors_come_from_the_one_table(serve_instance):
    serve.run(PickyLoader.bind())
    serve.run(NoLoader.bind(), name="plain", route_prefix="/plain")
    base = serve_instance.url + "/-/models"
    # The user's loader failing is the server's problem (500 naming it), not a bad request.
    r = requests.post(base + "/preload", json={"model_id": "bad"})
    assert (r.status_code, r.text) == (500, "ValueError: no weights for 'bad'")
    r = requests.post(base + "/pin", json={"model_id": "typo"})
    assert (r.status_code, r.text) == (500, "TypeError: loader got confused")
    assert requests.post(base + "/preload", json={"model_id": "good"}).status_code == 200
    # modelplex's own errors keep their documented statuses.
    r = requests.post(base + "/preload", data=b"not json")
    assert (r.status_code, r.text) == (400, "the request body must be a JSON object")
    r = requests.post(base + "/preload", json={"replicas": 1})
    assert (r.status_code, r.text) == (400, "model_id (a non-empty string) is required")
    r = requests.post(base + "/preload", json={"model_id": "m", "replicas": 0})
    assert (r.status_code, r.text) == (400, "replicas must be an int >= 1, got 0")
    r = requests.post(base + "/preload", json={"model_id": "m", "app": "nope"})
    assert (r.status_code, r.text) == (404, "no application named 'nope'")
    r = requests.post(base + "/preload", json={"model_id": "m", "deployment": "Nope"})
    assert (r.status_code, r.text) == (404, "application 'default' has no deployment 'Nope'")
    r = requests.get(base, params={"app": "nope"})
    assert (r.status_code, r.text) == (404, "no application named 'nope'")
    r = requests.post(base + "/preload", json={"model_id": "m", "app": "plain"})
    assert r.status_code == 400 and "no @serve.multiplexed loader" in r.text
    r = requests.post(base + "/configure", json={"max_memory_bytes": "lots"})
    assert r.status_code == 400 and "max_memory_bytes" in r.text
    # The Python API raises the same types, which stay the builtins they were.
    with pytest.raises(serve.ApplicationNotFoundError) as info:
        serve.preload_model("m", app_name="nope")
    assert isinstance(info.value, KeyError)
    with pytest.raises(KeyError):
        serve.get_app_handle("nope")
