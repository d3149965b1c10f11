"""``@serve.ingress``: the wrapped class driven through its replica hooks, with no process.

A test constructs the class as the replica does, awaits ``__modelplex_start__`` and sends
requests to ``__modelplex_asgi__`` through httpx's ASGI transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import subprocess
import sys
import textwrap

import httpx
import pytest
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

import modelplex as serve
from modelplex import _context
from modelplex._errors import MissingModelIdError
from modelplex._user.build import build_app

ROOT = pathlib.Path(__file__).resolve().parents[3]


@contextlib.asynccontextmanager
async def started(cls, *args, root_path="", **kwargs):
    """An instance as a replica makes it, and a client for it; stopped on the way out."""
    instance = cls(*args, **kwargs)
    await instance.__modelplex_start__()
    transport = httpx.ASGITransport(app=instance.__modelplex_asgi__, root_path=root_path)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    finally:
        await instance.__modelplex_stop__()


class Item(BaseModel):
    name: str
    count: int = 1


class Query(BaseModel):
    model_id: str
    x: int


def common(limit: int = 10) -> dict:
    return {"limit": limit}


async def test_routes_on_the_class_get_the_instance_as_self():
    app = FastAPI()

    @serve.ingress(app)
    class Greeter:
        def __init__(self, greeting: str) -> None:
            self.greeting = greeting

        @app.get("/hello/{name}")
        def hello(self, name: str, q: int = 0) -> dict:
            return {"text": f"{self.greeting} {name}", "q": q}

        @app.post("/items/{item_id}")
        async def create(self, item_id: int, item: Item) -> dict:
            return {"id": item_id, "item": item.model_dump(), "by": self.greeting}

        @app.get("/missing")
        async def missing(self) -> None:
            raise HTTPException(status_code=404, detail="no such thing")

        @app.get("/dep")
        async def dep(self, params: dict = Depends(common)) -> dict:
            return {**params, "by": self.greeting}

    async with started(Greeter, "hi") as client:
        r = await client.get("/hello/ann", params={"q": 3})
        assert r.json() == {"text": "hi ann", "q": 3}
        r = await client.post("/items/7", json={"name": "pen"})
        assert r.json() == {"id": 7, "item": {"name": "pen", "count": 1}, "by": "hi"}
        r = await client.get("/hello/ann", params={"q": "x"})
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["query", "q"]
        r = await client.post("/items/7", json={"count": 2})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "name"]
        r = await client.get("/missing")
        assert (r.status_code, r.json()) == (404, {"detail": "no such thing"})
        assert (await client.get("/dep", params={"limit": 5})).json() == {"limit": 5, "by": "hi"}
        schema = (await client.get("/openapi.json")).json()
        params = schema["paths"]["/hello/{name}"]["get"]["parameters"]
        assert [p["name"] for p in params] == ["name", "q"]  # no "self"
    # Handle calls reach the methods themselves.
    assert Greeter("yo").hello("bo") == {"text": "yo bo", "q": 0}


async def test_the_class_keeps_its_name_and_deployment_names_it():
    app = FastAPI()

    class Named:
        """The docstring."""

        @app.get("/")
        def root(self) -> str:
            return "ok"

    wrapped = serve.ingress(app)(Named)
    assert (wrapped.__name__, wrapped.__qualname__, wrapped.__module__, wrapped.__doc__) == (
        Named.__name__, Named.__qualname__, Named.__module__, "The docstring."
    )
    assert wrapped.__wrapped__ is Named and issubclass(wrapped, Named)
    assert serve.deployment(wrapped).name == "Named"


async def test_include_router_prefixes_are_kept():
    app = FastAPI()
    plain = APIRouter()
    versioned = APIRouter(prefix="/v1")
    inner = APIRouter()
    outer = APIRouter()
    # FastAPI >= 0.137 includes lazily: routes declared on the class below still count.
    app.include_router(plain, prefix="/plain")
    app.include_router(versioned, prefix="/api")
    outer.include_router(inner, prefix="/inner")
    app.include_router(outer, prefix="/outer")

    @serve.ingress(app)
    class Routed:
        name = "routed"

        @plain.get("/a")
        def a(self) -> str:
            return f"a {self.name}"

        @versioned.get("/b/{x}")
        async def b(self, x: int) -> dict:
            return {"b": x, "name": self.name}

        @inner.get("/c")
        def c(self) -> str:
            return f"c {self.name}"

    async with started(Routed) as client:
        assert (await client.get("/plain/a")).json() == "a routed"
        assert (await client.get("/api/v1/b/2")).json() == {"b": 2, "name": "routed"}
        assert (await client.get("/outer/inner/c")).json() == "c routed"
        assert (await client.get("/a")).status_code == 404
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert set(paths) == {"/plain/a", "/api/v1/b/{x}", "/outer/inner/c"}


async def test_routes_inherited_from_base_classes():
    app = FastAPI()

    class Base:
        @app.get("/base")
        def base(self) -> str:
            return f"base of {self.name}"

    class AA:  # "A" must not claim AA's routes: its qualname only starts with "A"
        @app.get("/aa")
        def aa(self) -> str:
            return "aa"

    @serve.ingress(app)
    class A(Base):
        name = "A"

        @app.get("/own")
        def own(self) -> str:
            return f"own of {self.name}"

    async with started(A) as client:
        assert (await client.get("/base")).json() == "base of A"
        assert (await client.get("/own")).json() == "own of A"
        # AA's route was left as a plain function route: FastAPI asks for "self" as a query.
        assert (await client.get("/aa")).status_code == 422


async def test_another_class_based_view_on_the_same_app_is_dropped():
    app = FastAPI()

    @serve.ingress(app)
    class First:
        @app.get("/first")
        def first(self) -> str:
            return "first"

    @serve.ingress(app)
    class Second:
        @app.get("/second")
        def second(self) -> str:
            return "second"

    async with started(Second) as client:
        assert (await client.get("/second")).json() == "second"
        assert (await client.get("/first")).status_code == 404
    async with started(First) as client:  # frozen before Second took the app over
        assert (await client.get("/first")).json() == "first"


async def test_the_app_is_frozen_when_the_class_is_decorated():
    app = FastAPI()

    @serve.ingress(app)
    class Frozen:
        @app.get("/before")
        def before(self) -> str:
            return "before"

    @app.get("/after")
    def after() -> str:
        return "after"

    async with started(Frozen) as client:
        assert (await client.get("/before")).json() == "before"
        assert (await client.get("/after")).status_code == 404
        assert set((await client.get("/openapi.json")).json()["paths"]) == {"/before"}


def test_decorating_leaves_the_class_and_its_functions_alone():
    app = FastAPI()

    class Plain:
        @app.get("/x")
        def x(self) -> str:
            return "x"

    original = Plain.__dict__["x"]
    wrapped = serve.ingress(app)(Plain)
    assert Plain.__dict__["x"] is original and wrapped.x is original


async def test_each_request_sees_its_own_instance():
    """Two replicas of one class in one process: ``self`` comes from the request's context."""
    app = FastAPI()

    @serve.ingress(app)
    class Who:
        def __init__(self, name: str) -> None:
            self.name = name

        @app.get("/who")
        async def who(self) -> str:
            await asyncio.sleep(0.01)
            return self.name

        @app.get("/who-sync")
        def who_sync(self) -> str:  # in FastAPI's worker thread
            return self.name

    async with started(Who, "one") as one, started(Who, "two") as two:
        answers = await asyncio.gather(
            *(c.get(p) for _ in range(5) for c in (one, two) for p in ("/who", "/who-sync"))
        )
    assert [r.json() for r in answers] == ["one", "one", "two", "two"] * 5


def test_a_class_with_call_or_not_a_class_is_refused():
    app = FastAPI()

    class Callable_:
        def __call__(self, request):
            return "no"

    with pytest.raises(ValueError, match="Classes passed to @serve.ingress may not have __call__ method."):
        serve.ingress(app)(Callable_)
    with pytest.raises(ValueError, match="@serve.ingress must be used with a class."):
        serve.ingress(app)(lambda: None)

    class NoBuilder:
        pass

    with pytest.raises(ValueError, match="requires NoBuilder to define `__serve_build_asgi_app__`"):
        serve.ingress()(NoBuilder)


def test_an_application_takes_one_ingress_deployment():
    first, second = FastAPI(), FastAPI()

    @serve.deployment
    @serve.ingress(first)
    class Inner:
        pass

    @serve.deployment
    @serve.ingress(second)
    class Outer:
        def __init__(self, inner) -> None:
            self.inner = inner

    assert build_app(Inner.bind(), "one")[1] == "Inner"
    with pytest.raises(serve.ModelplexError, match='multiple FastAPI deployments in application "two"'):
        build_app(Outer.bind(Inner.bind()), "two")


def test_a_route_method_without_self_is_refused():
    app = FastAPI()

    with pytest.raises(serve.ModelplexError, match="must have ``self`` as their first argument"):

        @serve.ingress(app)
        class NoSelf:
            @app.get("/x")
            def x() -> str:  # type: ignore[misc]
                return "x"


async def test_a_starlette_app_and_a_plain_asgi_callable():
    async def ping(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"pong {request.scope['root_path']} {request.url.path}")

    @serve.ingress(Starlette(routes=[Route("/ping", ping)]))
    class Star:
        pass

    async with started(Star, root_path="/star") as client:
        r = await client.get("/star/ping")
        assert (r.status_code, r.text) == (200, "pong /star /star/ping")
        assert (await client.get("/star/nope")).status_code == 404

    class Asgi:  # any ASGI callable; a function would be taken for a builder, as in Ray
        async def __call__(self, scope, receive, send):
            if scope["type"] == "lifespan":
                return  # no lifespan support: allowed, as long as it does not raise
            await send({"type": "http.response.start", "status": 201, "headers": []})
            await send({"type": "http.response.body", "body": scope["path"].encode()})

    Plain = serve.ingress(Asgi())()  # a standalone app, as in Ray: no class of one's own
    assert Plain.__name__ == "ASGIIngressDeployment"
    async with started(Plain) as client:
        r = await client.get("/any")
        assert (r.status_code, r.text) == (201, "/any")


async def test_builder_function_and_build_method():
    def build() -> FastAPI:
        app = FastAPI()

        @app.get("/built")
        def built() -> str:
            return "built"

        return app

    Built = serve.ingress(build)()
    async with started(Built) as client:
        assert (await client.get("/built")).json() == "built"

    @serve.ingress()
    class Late:
        def __init__(self, word: str) -> None:
            self.word = word

        async def __serve_build_asgi_app__(self) -> Starlette:
            async def say(request: Request) -> PlainTextResponse:
                return PlainTextResponse(self.word)

            return Starlette(routes=[Route("/say", say)])

    async with started(Late, "late") as client:
        assert (await client.get("/say")).text == "late"


class Recorder:
    """What the app's functions did: they run on a copy of the app (frozen when the class is
    decorated), whose closures hold copies, but classes stay the same objects."""

    events: list = []


async def test_an_async_constructor_runs_before_the_app_starts():
    app = FastAPI()
    order = Recorder.events = []

    @contextlib.asynccontextmanager
    async def lifespan(app):
        Recorder.events.append("startup")
        yield

    app.router.lifespan_context = lifespan

    @serve.ingress(app)
    class AsyncInit:
        async def __init__(self, value: int) -> None:
            await asyncio.sleep(0)
            Recorder.events.append("init")
            self.value = value

        @app.get("/value")
        def get(self) -> int:
            return self.value

    async with started(AsyncInit, 5) as client:
        assert (await client.get("/value")).json() == 5
    assert order == ["init", "startup"]


async def test_lifespan_runs_at_start_and_stop_and_its_state_reaches_requests():
    events = Recorder.events = []

    @contextlib.asynccontextmanager
    async def lifespan(app):
        Recorder.events.append("startup")
        app.state.flag = "set at startup"
        yield {"pool": "the pool"}
        Recorder.events.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @serve.ingress(app)
    class Life:
        @app.get("/state")
        def state(self, request: Request) -> dict:
            return {"app": request.app.state.flag, "request": request.state.pool}

        def __del__(self) -> None:
            Recorder.events.append("del")

    instance = Life()
    assert events == []
    await instance.__modelplex_start__()
    assert events == ["startup"]
    transport = httpx.ASGITransport(app=instance.__modelplex_asgi__)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/state")).json() == {"app": "set at startup", "request": "the pool"}
    await instance.__modelplex_stop__()
    assert events == ["startup", "shutdown"]  # __del__ is the replica's to run, after this
    assert type(instance).__del__ is Life.__wrapped__.__del__


async def test_on_startup_and_on_shutdown_handlers():
    Recorder.events = []
    app = FastAPI(
        on_startup=[lambda: Recorder.events.append("startup")],
        on_shutdown=[lambda: Recorder.events.append("shutdown")],
    )

    @serve.ingress(app)
    class Handlers:
        @app.get("/")
        def root(self) -> list:
            return Recorder.events

    async with started(Handlers) as client:
        assert (await client.get("/")).json() == ["startup"]
    assert Recorder.events == ["startup", "shutdown"]


async def test_a_failed_lifespan_startup_fails_the_start():
    @contextlib.asynccontextmanager
    async def lifespan(app):
        raise RuntimeError("no database")
        yield

    app = FastAPI(lifespan=lifespan)

    @serve.ingress(app)
    class Broken:
        pass

    instance = Broken()
    with pytest.raises(RuntimeError, match="ASGI lifespan startup failed"):
        await instance.__modelplex_start__()
    await instance.__modelplex_stop__()  # nothing to shut down; returns


async def test_multiplexed_loader_and_model_id_from_a_route():
    app = FastAPI()

    @serve.ingress(app)
    class Models:
        @serve.multiplexed(max_num_models_per_replica=2)
        async def get_model(self, model_id: str) -> str:
            return f"model-{model_id}"

        @app.get("/models/{model_id}")
        async def by_path(self, model_id: str) -> dict:
            return {"model": await self.get_model(model_id), "header": serve.get_multiplexed_model_id()}

        @app.post("/predict")
        async def by_body(self, query: Query = Body()) -> dict:
            return {"model": await self.get_model(query.model_id), "x": query.x}

        @app.get("/header")
        def by_header(self) -> str:  # a sync route: the request's context reaches the thread
            return serve.get_multiplexed_model_id()

        @app.get("/no-model")
        async def no_model(self) -> None:
            await self.get_model("")

    async with started(Models) as client:
        token = _context.set_request(_context.RequestContext(model_id="m9"))
        try:
            assert (await client.get("/models/a")).json() == {"model": "model-a", "header": "m9"}
            assert (await client.get("/header")).json() == "m9"
        finally:
            _context.reset_request(token)
        r = await client.post("/predict", json={"model_id": "b", "x": 1})
        assert r.json() == {"model": "model-b", "x": 1}
        # modelplex's own errors answer their status, as without an ingress.
        r = await client.get("/no-model")
        assert (r.status_code, r.text) == (400, str(MissingModelIdError()))


async def test_a_users_handler_for_modelplex_errors_is_kept():
    app = FastAPI()

    @app.exception_handler(serve.ModelplexError)
    async def mine(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"mine": type(exc).__name__}, status_code=418)

    @serve.ingress(app)
    class Handled:
        @app.get("/fail")
        async def fail(self) -> None:
            raise MissingModelIdError()

    async with started(Handled) as client:
        r = await client.get("/fail")
        assert (r.status_code, r.json()) == (418, {"mine": "MissingModelIdError"})


def test_import_modelplex_does_not_import_fastapi_and_starlette_apps_need_none():
    code = textwrap.dedent(
        """
        import asyncio, sys
        sys.modules["fastapi"] = None  # as if it were not installed: importing it fails
        import modelplex as serve
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        async def hello(request):
            return PlainTextResponse("hello")

        @serve.ingress(Starlette(routes=[Route("/", hello)]))
        class App:
            pass

        async def main():
            sent = []

            async def receive():
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message):
                sent.append(message)

            instance = App()
            await instance.__modelplex_start__()
            scope = {"type": "http", "method": "GET", "path": "/", "root_path": "",
                     "query_string": b"", "headers": []}
            await instance.__modelplex_asgi__(scope, receive, send)
            await instance.__modelplex_stop__()
            return sent

        sent = asyncio.run(main())
        assert sent[0]["status"] == 200 and sent[1]["body"] == b"hello", sent
        print("ok")
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


late_app = FastAPI()


@serve.ingress(late_app)
class UsesALaterHelper:
    @late_app.get("/late")
    def late(self) -> str:
        return helper_defined_after_the_class()


def helper_defined_after_the_class() -> str:
    return "found"


async def test_a_route_sees_module_names_defined_after_its_class():
    """Ray Serve's frozen copy of the app loses them (a NameError in the route)."""
    async with started(UsesALaterHelper) as client:
        assert (await client.get("/late")).json() == "found"
