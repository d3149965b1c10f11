"""The proxy app in-process, through httpx's ASGI transport: forwarding, the head limits, and
the management table (guards, tokens, the operations it parses), with fake collaborators."""

from __future__ import annotations

import asyncio
import logging
import pickle
from typing import Any

import httpx
import pytest

from modelplex._config import HTTPOptions
from modelplex._data.replies import ReplyStream
from modelplex._http.metrics import MetricsMiddleware
from modelplex._http.proxy import ProxyApp
from modelplex._messages import DeploymentID, HTTPResult, Result
from modelplex._types import AdminOp, ModelStatus

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
API = DeploymentID("api", "Api")
CHAT = DeploymentID("chat", "Chat")


class FakeRouter:
    def __init__(self, registry: "FakeRegistry", deployment_id: DeploymentID) -> None:
        self._registry = registry
        self._deployment_id = deployment_id

    async def call(self, method, *, model_id, http, trace_id, on_replica):
        self._registry.calls.append((self._deployment_id, method, model_id, http))
        if on_replica is not None:
            on_replica("replica-1")
        reply = self._registry.reply
        if callable(reply):
            return await reply()
        return reply or HTTPResult(
            200, ((b"content-type", b"text/plain"),), f"from {self._deployment_id.name}".encode()
        )


class FakeRegistry:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.reply: Any = None

    def router(self, deployment_id: DeploymentID) -> FakeRouter:
        return FakeRouter(self, deployment_id)


class FakeModels:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    async def list_models(self, app, deployment):
        self.calls.append(("list", app, deployment))
        return [ModelStatus("r1", "m1", "loaded")]

    async def list_artifacts(self):
        return []

    async def place(self, op, model_id, app, deployment, replicas):
        self.calls.append(("place", op, model_id, app, deployment, replicas))
        return ["r1"]

    async def release(self, op, model_id, app, deployment):
        self.calls.append(("release", op, model_id, app, deployment))
        return ["r2"]

    async def configure(self, app, deployment, max_models, max_bytes):
        self.calls.append(("configure", app, deployment, max_models, max_bytes))

    async def set_weights(self, app, deployment, weights):
        self.calls.append(("weights", app, deployment, weights))
        return dict(weights)


class FakeDeployer:
    def __init__(self) -> None:
        self.applied: list[Any] = []
        self.stopped = False

    def status(self):
        return {"applications": {"api": "RUNNING"}}

    async def apply(self, config):
        self.applied.append(config)
        return {"api": "updated"}

    def shutdown(self):
        self.stopped = True


class FakePages:
    async def status(self):
        return {"applications": {}}

    async def stream(self, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": False})


def routes():
    return {"/": ("api", API), "/chat": ("chat", CHAT)}


def make_app(registry=None, *, models=None, pages=None, metrics=None, deployer=None, **options):
    return ProxyApp(
        routes, registry or FakeRegistry(), HTTPOptions(**options),
        models=models, pages=pages, metrics=metrics, deployer=deployer,
    )


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy")


# ---- forwarding ---------------------------------------------------------------------------------


async def test_the_longest_prefix_gets_the_request_with_its_model_and_root_path():
    registry = FakeRegistry()
    async with client(make_app(registry)) as http:
        r = await http.post("/chat/v1?x=1", content=b"hi", headers={"serve_multiplexed_model_id": "m7"})
        assert (r.status_code, r.text) == (200, "from Chat")
        assert (await http.get("/chatty")).text == "from Api"  # whole segments only
    (deployment, method, model_id, request), _ = registry.calls
    assert (deployment, method, model_id) == (CHAT, "__call__", "m7")
    assert request.body == b"hi"
    assert request.scope["root_path"] == "/chat" and request.scope["path"] == "/chat/v1"


async def test_a_path_no_application_serves_is_404():
    app = ProxyApp(lambda: {"/chat": ("chat", CHAT)}, FakeRegistry(), HTTPOptions())
    async with client(app) as http:
        r = await http.get("/other")
    assert (r.status_code, r.text) == (404, "no application serves the path '/other'")


async def test_the_head_and_body_limits():
    app = make_app(max_header_count=20, max_header_bytes=400, max_body_bytes=10)
    async with client(app) as http:
        many = {f"x-h{i}": "v" for i in range(25)}
        r = await http.get("/", headers=many)
        assert r.status_code == 431 and "more than 20 headers" in r.text
        r = await http.get("/", headers={"x-big": "v" * 500})
        assert r.status_code == 431 and "headers larger than 400 bytes" in r.text
        r = await http.post("/", content=b"x" * 11)
        assert (r.status_code, r.text) == (413, "request body is larger than 10 bytes")
        assert (await http.post("/", content=b"x" * 10)).status_code == 200


async def test_a_request_past_its_time_limit_is_cancelled_with_504():
    registry = FakeRegistry()
    cancelled = asyncio.Event()

    async def forever():
        try:
            await asyncio.sleep(60)
        finally:
            cancelled.set()

    registry.reply = forever
    async with client(make_app(registry, request_timeout_s=0.1)) as http:
        r = await http.get("/")
    assert r.status_code == 504
    assert cancelled.is_set()  # down to the call, before the answer went out


async def test_a_streamed_reply_is_relayed_chunk_by_chunk():
    registry = FakeRegistry()

    async def streamed():
        stream = ReplyStream(lambda n: None, lambda: None)
        stream.push(pickle.dumps(HTTPResult(200, ((b"content-type", b"text/plain"),), b"")))
        for chunk in (b"one ", b"two"):
            stream.push(pickle.dumps(chunk))
        stream.finish(Result(1, True, b""))
        return stream

    registry.reply = streamed
    async with client(make_app(registry)) as http:
        r = await http.get("/")
    assert (r.status_code, r.text) == (200, "one two")


async def test_the_access_line_names_the_request_and_can_be_switched_off(caplog):
    app = make_app()
    caplog.set_level(logging.INFO, "modelplex.access")
    async with client(app) as http:
        await http.get("/chat/x", headers={"serve_multiplexed_model_id": "m1"})
        await http.get("/-/healthz")  # probes are not logged
        app.set_access_log(False)
        await http.get("/chat/y")
    (record,) = [r for r in caplog.records if r.name == "modelplex.access"]
    assert record.getMessage().startswith("GET /chat/x 200 ")
    assert (record.application, record.deployment, record.replica, record.model_id) == (
        "chat", str(CHAT), "replica-1", "m1"
    )


async def test_an_ingress_whose_logging_config_turns_access_lines_off_is_quiet(caplog):
    app = ProxyApp(routes, FakeRegistry(), HTTPOptions(), access_log_for=lambda d: d != CHAT)
    caplog.set_level(logging.INFO, "modelplex.access")
    async with client(app) as http:
        await http.get("/chat/x")
        await http.get("/x")
    assert [r.route for r in caplog.records if r.name == "modelplex.access"] == ["/x"]


async def test_the_metrics_middleware_counts_each_request_by_route():
    seen = []

    class FakeMetrics:
        def http_request(self, route, method, application, status, seconds):
            seen.append((route, method, application, status))

    app = MetricsMiddleware(make_app(), FakeMetrics())  # type: ignore[arg-type]
    async with client(app) as http:
        await http.get("/chat/x")
        await http.get("/-/nope")
    assert seen == [("/chat", "GET", "chat", 200), ("", "GET", "", 404)]


# ---- the management table -----------------------------------------------------------------------


async def test_open_routes_answer_even_with_management_off_and_a_token_set():
    async with client(make_app(management_routes=False, management_token=TOKEN)) as http:
        assert (await http.get("/-/healthz")).text == "success"
        assert (await http.get("/-/routes")).json() == {"/": "api", "/chat": "chat"}
        r = await http.get("/-/nothing")
    assert (r.status_code, r.text) == (404, "no management route '/-/nothing'")


async def test_model_routes_need_the_header_token():
    app = make_app(models=FakeModels(), management_token=TOKEN)
    async with client(app) as http:
        r = await http.get("/-/models")
        assert (r.status_code, r.text) == (401, "model management needs 'Authorization: Bearer <token>'")
        assert (await http.get("/-/models", headers={"Authorization": "Bearer nope"})).status_code == 401
        assert (await http.get("/-/models", params={"token": TOKEN})).status_code == 401
        r = await http.get("/-/models", headers=AUTH, params={"app": "a"})
        assert r.status_code == 200 and r.json()[0]["model_id"] == "m1"
        # Under /-/models, a path no route serves is guarded first, then 404 with its method.
        assert (await http.post("/-/models/explode")).status_code == 401
        r = await http.post("/-/models/explode", headers=AUTH)
        assert (r.status_code, r.text) == (404, "no management route POST '/-/models/explode'")
        r = await http.get("/-/models/preload", headers=AUTH)
        assert (r.status_code, r.text) == (404, "no management route GET '/-/models/preload'")


async def test_switched_off_management_routes_are_404_before_the_token():
    app = make_app(
        models=FakeModels(), pages=FakePages(), metrics=lambda: (b"", "text/plain"),
        deployer=FakeDeployer(), management_routes=False, management_token=TOKEN,
    )
    async with client(app) as http:
        r = await http.get("/-/models", headers=AUTH)
        assert (r.status_code, r.text) == (404, "model management over HTTP is switched off")
        for path in ("/-/metrics", "/-/status", "/-/dashboard", "/-/applications", "/-/shutdown"):
            r = await http.get(path)
            assert (r.status_code, r.text) == (404, "management over HTTP is switched off"), path


async def test_a_route_whose_collaborator_is_absent_is_not_there():
    async with client(make_app(management_token=TOKEN)) as http:
        for path in ("/-/models", "/-/artifacts", "/-/metrics", "/-/status", "/-/applications"):
            r = await http.get(path, headers=AUTH)
            assert (r.status_code, r.text) == (404, f"no management route {path!r}")


async def test_the_model_operations_reach_the_manager_parsed():
    models = FakeModels()
    async with client(make_app(models=models)) as http:
        base = "/-/models"
        r = await http.post(f"{base}/preload", json={"model_id": "m", "replicas": 2})
        assert r.json() == {"replicas": ["r1"]}
        await http.post(f"{base}/preload", json={"model_id": "m", "disk_only": True, "app": "a"})
        await http.post(f"{base}/pin", json={"model_id": "m", "disk_only": True, "deployment": "D"})
        r = await http.post(f"{base}/unpin", json={"model_id": "m"})
        assert r.json() == {"replicas": ["r2"]}
        await http.post(f"{base}/unload", json={"model_id": "m", "app": "a"})
        r = await http.post(f"{base}/configure", json={"max_num_models_per_replica": 3})
        assert r.json() == {"ok": True}
        r = await http.post(f"{base}/weights", json={"model_weights": {"gold": 4}, "app": "a"})
        assert r.json() == {"model_weights": {"gold": 4}}
        r = await http.post(f"{base}/weights", json={})
        assert r.status_code == 400 and "model_weights" in r.text
    assert models.calls == [
        ("place", AdminOp.PRELOAD, "m", "default", None, 2),
        ("place", AdminOp.WARM, "m", "a", None, 1),
        ("place", AdminOp.PIN, "m", "default", "D", 1),  # disk_only warms on preload alone
        ("release", AdminOp.UNPIN, "m", "default", None),
        ("release", AdminOp.UNLOAD, "m", "a", None),
        ("configure", "default", None, 3, None),
        ("weights", "a", None, {"gold": 4}),
    ]


async def test_bad_model_operation_bodies_are_400():
    models = FakeModels()
    async with client(make_app(models=models)) as http:
        cases = [
            ("/-/models/preload", b"not json", "the request body must be a JSON object"),
            ("/-/models/pin", b"[1]", "the request body must be a JSON object"),
            ("/-/models/unload", b"{}", "model_id (a non-empty string) is required"),
            ("/-/models/preload", b'{"model_id": ""}', "model_id (a non-empty string) is required"),
            ("/-/models/preload", b'{"model_id": "m", "disk_only": 1}',
             "disk_only must be true or false, got 1"),
        ]
        for path, body, message in cases:
            r = await http.post(path, content=body)
            assert (r.status_code, r.text) == (400, message), (path, body)
        r = await http.post("/-/models/configure", json={"max_memory_bytes": "lots"})
        assert r.status_code == 400 and "max_memory_bytes" in r.text
    assert models.calls == []


async def test_the_page_routes_take_the_query_token_and_keep_it_in_a_cookie():
    app = make_app(pages=FakePages(), management_token=TOKEN, deployer=FakeDeployer())
    async with client(app) as http:
        r = await http.get("/-/status")
        assert (r.status_code, r.text) == (
            401, "/-/status needs 'Authorization: Bearer <token>' (a browser: /-/status?token=<token>)"
        )
        assert (await http.get("/-/status", params={"token": "wrong"})).status_code == 401
        r = await http.get("/-/status", headers=AUTH)
        assert r.json() == {"applications": {}} and r.headers["cache-control"] == "no-store"
        r = await http.get("/-/dashboard", params={"token": TOKEN})
        assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
        assert r.headers["set-cookie"] == (
            f"modelplex_token={TOKEN}; Path=/-/; HttpOnly; SameSite=Strict"
        )
        assert "set-cookie" not in (await http.get("/-/dashboard", headers=AUTH)).headers
        cookie = {"Cookie": f"modelplex_token={TOKEN}"}
        assert (await http.get("/-/events", headers=cookie)).text == "data: {}\n\n"
        # Routes that change something take the header alone: no CSRF through the cookie.
        assert (await http.get("/-/applications", headers=cookie)).status_code == 401
        assert (await http.get("/-/applications", params={"token": TOKEN})).status_code == 401
        r = await http.post("/-/status", headers=AUTH)
        assert (r.status_code, r.text) == (404, "no management route POST '/-/status'")


async def test_config_deploys_join_the_table_when_enabled():
    app = make_app(management_token=TOKEN)
    deployer = FakeDeployer()
    async with client(app) as http:
        r = await http.get("/-/applications", headers=AUTH)
        assert (r.status_code, r.text) == (404, "no management route '/-/applications'")
        app.enable_deploys(deployer)
        r = await http.get("/-/applications")
        assert (r.status_code, r.text) == (401, "this route needs 'Authorization: Bearer <token>'")
        assert (await http.get("/-/applications", headers=AUTH)).json() == {
            "applications": {"api": "RUNNING"}
        }
        r = await http.put("/-/applications", headers=AUTH, json={"applications": []})
        assert r.json() == {"api": "updated"}
        r = await http.put("/-/applications", headers=AUTH, content=b"{")
        assert (r.status_code, r.text) == (400, "the request body must be a config as JSON")
        r = await http.get("/-/shutdown", headers=AUTH)
        assert (r.status_code, r.text) == (404, "no management route GET '/-/shutdown'")
        assert not deployer.stopped
        assert (await http.post("/-/shutdown", headers=AUTH)).json() == {"ok": True}
    assert deployer.applied == [{"applications": []}] and deployer.stopped


async def test_metrics_are_scraped_with_the_token():
    app = make_app(metrics=lambda: (b"m 1\n", "text/plain; version=0.0.4"), management_token=TOKEN)
    async with client(app) as http:
        assert (await http.get("/-/metrics")).status_code == 401
        r = await http.get("/-/metrics", headers=AUTH)
    assert (r.status_code, r.text) == (200, "m 1\n")
    assert r.headers["content-type"] == "text/plain; version=0.0.4"


@pytest.mark.parametrize("path", ["/-/models", "/-/status"])
async def test_no_token_set_opens_every_route(path):
    async with client(make_app(models=FakeModels(), pages=FakePages())) as http:
        assert (await http.get(path)).status_code == 200
