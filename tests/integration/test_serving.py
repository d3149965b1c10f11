"""Deployments, applications, handles and HTTP: everything around the model cache."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest
import requests
from starlette.responses import JSONResponse, PlainTextResponse

import modelplex as serve
from modelplex import DeploymentHandle

from ..conftest import pid_alive, wait_until


class CustomError(Exception):
    pass


@serve.deployment
class Echo:
    def __init__(self, greeting: str = "hello") -> None:
        self.greeting = greeting

    async def __call__(self, request):
        kind = request.query_params.get("kind", "text")
        if kind == "text":
            return f"{self.greeting} {request.url.path}"
        if kind == "bytes":
            return b"\x00\x01raw"
        if kind == "json":
            return {"a": [1, 2], "body": (await request.body()).decode()}
        if kind == "number":
            return 42
        if kind == "response":
            return PlainTextResponse("teapot", status_code=418, headers={"x-custom": "yes"})
        if kind == "raise":
            raise CustomError("boom from the replica")
        if kind == "unserializable":
            return object()
        if kind == "numpy":
            import numpy as np

            return {"array": np.arange(3), "scalar": np.float32(0.5)}
        if kind == "numpy-array":
            import numpy as np

            return np.array([[1, 2], [3, 4]], dtype=np.uint8)
        return JSONResponse({"kind": kind})

    def sync_method(self, x: int) -> int:
        return x * 2

    async def async_method(self, x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    def fail(self) -> None:
        raise CustomError("remote failure")

    def pid(self) -> int:
        return os.getpid()


def test_return_values_map_to_responses(serve_instance):
    serve.run(Echo.bind("hi"))
    url = serve_instance.url
    r = requests.get(url + "/some/path")
    assert r.status_code == 200 and r.text == "hi /some/path"
    assert r.headers["content-type"].startswith("text/plain")
    r = requests.get(url, params={"kind": "bytes"})
    assert r.content == b"\x00\x01raw"
    r = requests.post(url, params={"kind": "json"}, data=b"payload")
    assert r.json() == {"a": [1, 2], "body": "payload"}
    assert requests.get(url, params={"kind": "number"}).json() == 42
    r = requests.get(url, params={"kind": "response"})
    assert (r.status_code, r.text, r.headers["x-custom"]) == (418, "teapot", "yes")
    r = requests.get(url, params={"kind": "numpy"})
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"array": [0, 1, 2], "scalar": 0.5}
    assert requests.get(url, params={"kind": "numpy-array"}).json() == [[1, 2], [3, 4]]


def test_errors_over_http_and_the_replica_keeps_serving(serve_instance):
    serve.run(Echo.bind())
    r = requests.get(serve_instance.url, params={"kind": "raise"})
    assert r.status_code == 500 and "CustomError: boom from the replica" in r.text
    r = requests.get(serve_instance.url, params={"kind": "unserializable"})
    assert r.status_code == 500 and "of type object" in r.text
    assert requests.get(serve_instance.url).status_code == 200


def test_handles_sync_async_and_remote_errors(serve_instance):
    handle = serve.run(Echo.bind())
    assert handle.sync_method.remote(21).result() == 42
    assert handle.options(method_name="async_method").remote(1).result() == 2
    with pytest.raises(CustomError, match="remote failure") as info:
        handle.fail.remote().result()
    assert "in fail" in str(info.value.__cause__)  # the replica's traceback travels along
    with pytest.raises(AttributeError, match="no method 'nope'"):
        handle.nope.remote().result()


def test_handle_awaited_from_async_code(serve_instance):
    handle = serve.run(Echo.bind())

    async def main():
        return await asyncio.gather(*(handle.sync_method.remote(i) for i in range(10)))

    assert asyncio.run(main()) == [i * 2 for i in range(10)]


@serve.deployment
class Downstream:
    def __call__(self):
        return serve.get_multiplexed_model_id()


@serve.deployment
class Upstream:
    def __init__(self, downstream: DeploymentHandle):
        self._h = downstream

    async def __call__(self, request):
        before = serve.get_multiplexed_model_id()
        down = await self._h.options(multiplexed_model_id="bar").remote()
        return {"before": before, "down": down, "after": serve.get_multiplexed_model_id()}


def test_composition_passes_the_model_id_and_does_not_leak_it(serve_instance):
    serve.run(Upstream.bind(Downstream.bind()))
    r = requests.get(serve_instance.url)
    assert r.json() == {"before": "", "down": "bar", "after": ""}
    r = requests.get(serve_instance.url, headers={"serve_multiplexed_model_id": "foo"})
    assert r.json() == {"before": "foo", "down": "bar", "after": "foo"}


def test_applications_side_by_side_and_unknown_route(serve_instance):
    serve.run(Echo.bind("one"), name="one", route_prefix="/one")
    serve.run(Echo.bind("two"), name="two", route_prefix="/two")
    assert requests.get(serve_instance.url + "/one/x").text == "one /one/x"
    assert requests.get(serve_instance.url + "/two").text == "two /two"
    r = requests.get(serve_instance.url + "/three")
    assert r.status_code == 404
    serve.delete("one")
    assert requests.get(serve_instance.url + "/one").status_code == 404
    assert requests.get(serve_instance.url + "/two").status_code == 200


def test_redeploy_replaces_the_replicas(serve_instance):
    handle = serve.run(Echo.bind("old"))
    old_pid = handle.pid.remote().result()
    handle = serve.run(Echo.bind("new"))
    assert requests.get(serve_instance.url).text == "new /"
    wait_until(lambda: not pid_alive(old_pid), message="the old replica kept running")
    assert handle.pid.remote().result() != old_pid


def test_dead_replica_is_replaced(serve_instance):
    handle = serve.run(Echo.bind())
    pid = handle.pid.remote().result()
    os.kill(pid, signal.SIGKILL)

    def served_by_new_replica():
        try:
            return handle.pid.remote().result(timeout_s=5) != pid
        except Exception:
            return False

    wait_until(served_by_new_replica, timeout=20, message="no replacement replica")
    assert requests.get(serve_instance.url).status_code == 200


def test_failing_constructor_makes_run_raise(serve_instance):
    @serve.deployment
    class Broken:
        def __init__(self):
            raise ValueError("bad constructor argument")

    with pytest.raises(serve.DeploymentFailedError, match="bad constructor argument"):
        serve.run(Broken.bind())
    serve.run(Echo.bind())  # the runtime is still healthy
    assert requests.get(serve_instance.url).status_code == 200


def test_shutdown_ends_a_run_stuck_in_a_constructor(serve_instance, tmp_path):
    inside = tmp_path / "inside"

    @serve.deployment
    class Stuck:
        def __init__(self, marker: str):
            open(marker, "w").close()
            time.sleep(3600)

    outcome: list[BaseException] = []

    def run() -> None:
        try:
            serve.run(Stuck.bind(str(inside)))
        except BaseException as exc:  # noqa: BLE001 - whatever it is, it must end the call
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    wait_until(inside.exists, timeout=60, message="the replica never reached __init__")
    started = time.monotonic()
    serve.shutdown()
    assert time.monotonic() - started < 30
    thread.join(10)
    assert not thread.is_alive() and outcome


def test_function_deployment(serve_instance):
    @serve.deployment
    def hello(request):
        return "function says hi"

    serve.run(hello.bind())
    assert requests.get(serve_instance.url).text == "function says hi"


def test_bad_model_ids_rejected():
    with pytest.raises(ValueError):
        DeploymentHandle("X").options(multiplexed_model_id="a\x00b")
    with pytest.raises(ValueError):
        DeploymentHandle("X").options(multiplexed_model_id="x" * 300)


@serve.deployment
class SyncUpstream:
    def __init__(self, downstream: DeploymentHandle):
        self._h = downstream

    def __call__(self, request):  # a sync method: runs in a thread, blocks on .result()
        return self._h.options(multiplexed_model_id="sync").remote().result(timeout_s=30)


def test_sync_method_calls_a_handle(serve_instance):
    serve.run(SyncUpstream.bind(Downstream.bind()))
    assert requests.get(serve_instance.url).text == "sync"


@serve.deployment
class SyncModels:
    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> str:
        return f"model-{model_id}"

    def __call__(self, request):  # a sync method fetching a model without await
        return self.get_model(serve.get_multiplexed_model_id())


def test_sync_method_fetches_a_model(serve_instance):
    serve.run(SyncModels.bind())
    r = requests.get(serve_instance.url, headers={"serve_multiplexed_model_id": "3"})
    assert r.text == "model-3"


@serve.deployment
class RaisesHTTP:
    def __call__(self, request):
        from starlette.exceptions import HTTPException

        raise HTTPException(status_code=403, detail="not for you")


def test_starlette_http_exception_keeps_its_status(serve_instance):
    serve.run(RaisesHTTP.bind())
    r = requests.get(serve_instance.url)
    assert (r.status_code, r.text) == (403, "not for you")
