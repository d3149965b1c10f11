"""``@serve.ingress`` end to end: FastAPI and Starlette apps in replica processes, over HTTP
through the proxy. One modelplex instance serves the whole module; most tests share one app."""

from __future__ import annotations

import contextlib
import os
import re
from types import SimpleNamespace

import pytest
import requests
from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import modelplex as serve
from modelplex import DeploymentHandle

from ..conftest import ROOT, free_port, wait_until

H = "serve_multiplexed_model_id"


class Prediction(BaseModel):
    model_id: str
    x: float


def pagination(limit: int = 10, offset: int = 0) -> dict:
    return {"limit": limit, "offset": offset}


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.started_in = os.getpid()
    yield {"token": f"started in {os.getpid()}"}


@serve.deployment
class Scorer:
    @serve.multiplexed(max_num_models_per_replica=4)
    async def get_model(self, model_id: str) -> str:
        return f"scorer-{model_id}"

    async def __call__(self, x: int) -> dict:
        model_id = serve.get_multiplexed_model_id()
        return {"model": await self.get_model(model_id), "x": x}


app = FastAPI(lifespan=lifespan)


@serve.deployment(num_replicas=2)
@serve.ingress(app)
class Api:
    def __init__(self, scorer: DeploymentHandle, greeting: str) -> None:
        self.scorer = scorer
        self.greeting = greeting

    @serve.multiplexed(max_num_models_per_replica=4)
    async def get_model(self, model_id: str) -> str:
        return f"model-{model_id}"

    @app.get("/hello/{name}")
    def hello(self, name: str, times: int = 1) -> dict:
        return {"text": " ".join([f"{self.greeting} {name}"] * times)}

    @app.post("/predict")
    async def predict(self, body: Prediction) -> dict:
        return {"model": await self.get_model(body.model_id), "y": body.x * 2}

    @app.get("/models/{model_id}")
    async def model(self, model_id: str) -> dict:
        return {"model": await self.get_model(model_id), "pid": os.getpid()}

    @app.get("/routed")
    async def routed(self) -> dict:
        model_id = serve.get_multiplexed_model_id()
        return {"model": await self.get_model(model_id), "pid": os.getpid()}

    @app.get("/items/{item_id}")
    async def item(self, item_id: int, page: dict = Depends(pagination)) -> dict:
        if item_id != 1:
            raise HTTPException(status_code=404, detail=f"item {item_id} not found")
        return {"item": item_id, **page}

    @app.get("/startup")
    def startup(self, request: Request) -> dict:
        return {
            "app": request.app.state.started_in,
            "request": request.state.token,
            "pid": os.getpid(),
        }

    @app.get("/boom")
    async def boom(self) -> None:
        raise ValueError("boom in a route")

    @app.get("/compose/{model_id}")
    async def compose(self, model_id: str, x: int = 1) -> dict:
        return await self.scorer.options(multiplexed_model_id=model_id).remote(x)


@pytest.fixture(scope="module")
def instance():
    port = free_port()
    serve.start(http_options={"port": port})
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}")
    serve.shutdown()


@pytest.fixture(scope="module")
def api(instance):
    """The FastAPI app, two replicas, under the route prefix /main."""
    handle = serve.run(Api.bind(Scorer.bind(), "hi"), name="main", route_prefix="/main")
    return SimpleNamespace(url=instance.url + "/main", handle=handle)


def test_routes_params_body_and_the_instance_as_self(api):
    r = requests.get(api.url + "/hello/ann", params={"times": 2})
    assert (r.status_code, r.json()) == (200, {"text": "hi ann hi ann"})
    r = requests.post(api.url + "/predict", json={"model_id": "a", "x": 1.5})
    assert r.json() == {"model": "model-a", "y": 3.0}
    # A handle calls the methods themselves.
    assert api.handle.hello.remote("bo").result() == {"text": "hi bo"}


def test_validation_errors_http_exceptions_and_dependencies(api):
    r = requests.get(api.url + "/hello/ann", params={"times": "many"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", "times"]
    r = requests.post(api.url + "/predict", json={"x": 1})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "model_id"]
    r = requests.get(api.url + "/items/2")
    assert (r.status_code, r.json()) == (404, {"detail": "item 2 not found"})
    r = requests.get(api.url + "/items/1", params={"limit": 3})
    assert r.json() == {"item": 1, "limit": 3, "offset": 0}
    for _ in range(2):  # an exception in a route is a 500; both replicas keep serving
        assert requests.get(api.url + "/boom").status_code == 500
    assert requests.get(api.url + "/hello/x").status_code == 200


def test_openapi_and_docs_under_the_route_prefix(api):
    r = requests.get(api.url + "/openapi.json")
    assert r.status_code == 200
    schema = r.json()
    assert schema["servers"] == [{"url": "/main"}]
    assert "/hello/{name}" in schema["paths"]
    params = schema["paths"]["/hello/{name}"]["get"]["parameters"]
    assert [p["name"] for p in params] == ["name", "times"]  # no "self"
    r = requests.get(api.url + "/docs")
    assert r.status_code == 200 and "'/main/openapi.json'" in r.text


def test_lifespan_startup_state_reaches_requests(api):
    for _ in range(4):
        body = requests.get(api.url + "/startup").json()
        assert body["app"] == body["pid"]  # each replica ran its own startup
        assert body["request"] == f"started in {body['pid']}"


def test_multiplexed_loader_from_a_path_parameter(api):
    for model_id in ("x1", "x2"):
        r = requests.get(api.url + f"/models/{model_id}")
        assert r.status_code == 200 and r.json()["model"] == f"model-{model_id}"


def test_the_header_routes_to_the_replica_holding_the_model(api):
    pids = {requests.get(api.url + "/routed", headers={H: "m1"}).json()["pid"] for _ in range(8)}
    assert len(pids) == 1
    [holder] = pids
    holders = [m.replica_id for m in serve.list_models(app_name="main") if m.model_id == "m1"]
    assert len(holders) == 1
    # Without the header, requests spread over both replicas.
    spread = {requests.get(api.url + "/startup").json()["pid"] for _ in range(20)}
    assert len(spread) == 2 and holder in spread


def test_composition_through_a_handle_from_a_route(api):
    r = requests.get(api.url + "/compose/m7", params={"x": 4})
    assert r.json() == {"model": "scorer-m7", "x": 4}


async def ping(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"pong {request.scope['root_path']} {request.url.path}")


@serve.deployment
@serve.ingress(Starlette(routes=[Route("/ping", ping)]))
class Star:
    pass


def test_a_starlette_app(instance):
    serve.run(Star.bind(), name="star", route_prefix="/star")
    r = requests.get(instance.url + "/star/ping")
    assert (r.status_code, r.text) == (200, "pong /star /star/ping")
    assert requests.get(instance.url + "/star/other").status_code == 404


@contextlib.asynccontextmanager
async def recording_lifespan(app: FastAPI):
    app.state.events = None
    yield
    with open(app.state.events, "a") as f:
        f.write("shutdown\n")


life = FastAPI(lifespan=recording_lifespan)


@serve.deployment
@serve.ingress(life)
class Life:
    def __init__(self, events: str) -> None:
        self.events = events

    @life.post("/arm")
    def arm(self, request: Request) -> str:
        request.app.state.events = self.events
        return "armed"

    def __del__(self) -> None:
        with open(self.events, "a") as f:
            f.write("del\n")


def test_lifespan_shutdown_then_del_once_on_a_graceful_stop(instance, tmp_path):
    events = tmp_path / "events"
    serve.run(Life.bind(str(events)), name="life", route_prefix="/life")
    assert requests.post(instance.url + "/life/arm").json() == "armed"
    serve.delete("life")
    wait_until(lambda: events.exists() and "del" in events.read_text())
    assert events.read_text() == "shutdown\ndel\n"


def test_the_docs_example_runs(instance):
    text = open(os.path.join(ROOT, "docs", "apps.md")).read()
    section = text.split("## FastAPI ingress", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    exec(compile(block, "docs/apps.md", "exec"), {"__name__": "docs"})  # shipped by value
    r = requests.post(
        instance.url + "/api/translate/de", headers={H: "de"}, json={"text": "Welt"}
    )
    assert r.json() == {"model": "de", "text": "hallo Welt!"}
    assert requests.post(instance.url + "/api/translate/xx", json={"text": "a"}).status_code == 404
    docs = requests.get(instance.url + "/api/docs")
    assert docs.status_code == 200 and "'/api/openapi.json'" in docs.text
