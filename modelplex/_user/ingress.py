"""``@serve.ingress``: a FastAPI, Starlette or any ASGI app answers a deployment's HTTP requests.

As in Ray Serve 2.60 (``ray.serve.api.ingress`` and ``_private/http_util.py``, whose names this
module keeps): routes defined on the class get the replica's instance as ``self`` through a
FastAPI dependency; the app is frozen (a pickled copy) when the class is decorated; its lifespan
runs once per replica. ``@serve.deployment`` records that the class is one (its
``DeploymentInterface``), and the replica then calls its entry points ``__modelplex_start__``,
``__modelplex_asgi__`` and ``__modelplex_stop__`` (see ``_replica/replica.py``).

FastAPI stays optional: nothing here imports it unless the app is a FastAPI one, and then it is
already imported.
"""

from __future__ import annotations

import collections.abc
import contextvars
import copyreg
import dataclasses
import inspect
import io
import logging
import pickle
import types
import sys
from typing import Any, Callable

import cloudpickle
from starlette.datastructures import State
from starlette.responses import Response

from .._errors import ModelplexError, error_response

logger = logging.getLogger("modelplex.replica")

SERVE_BUILD_ASGI_APP_METHOD = "__serve_build_asgi_app__"

# The instance serving the current request: class-based-view routes read it for ``self``. A
# context variable, not a global, since several replicas (instances) may share a process.
_current_instance: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "modelplex_ingress_instance", default=None
)


async def get_current_servable_instance() -> Any:
    """The ``self`` of a class-based-view route. ``async`` so that FastAPI awaits it in the
    request's own task (where the context variable is set), not in a worker thread."""
    instance = _current_instance.get()
    if instance is None:
        raise RuntimeError(
            "a route of a @serve.ingress class runs only in a modelplex replica (its `self` "
            "is the replica's instance)"
        )
    return instance


def ingress(app: Any = None) -> Callable:
    """Wrap a deployment class with an ASGI application (FastAPI, Starlette or any ASGI
    callable) that parses its HTTP requests, as Ray Serve's ``serve.ingress``.

    ``app`` may also be a builder function, called on each replica to make the app, or left
    out if the class defines ``__serve_build_asgi_app__`` (called on the replica after the
    constructor; it may be ``async``).
    """
    _register_reducers()

    def decorator(cls: type | None = None) -> type:
        if cls is None:

            class ASGIIngressDeployment:
                def __init__(self, *args: Any, **kwargs: Any) -> None:
                    self.args = args
                    self.kwargs = kwargs

            cls = ASGIIngressDeployment

        if not inspect.isclass(cls):
            raise ValueError("@serve.ingress must be used with a class.")
        if issubclass(cls, collections.abc.Callable):
            raise ValueError("Classes passed to @serve.ingress may not have __call__ method.")
        if app is None and not hasattr(cls, SERVE_BUILD_ASGI_APP_METHOD):
            raise ValueError(
                "serve.ingress() called without an app argument requires "
                f"{cls.__name__} to define `{SERVE_BUILD_ASGI_APP_METHOD}`."
            )
        if _is_fastapi(app):
            make_fastapi_class_based_view(app, cls)
            _resolve_annotations(app)

        frozen_app_or_func: Any = None
        if inspect.isfunction(app):
            frozen_app_or_func = app
        elif app is not None:
            frozen_app_or_func = _freeze(app)

        class ASGIIngressWrapper(cls, ASGIAppReplicaWrapper):  # type: ignore[valid-type,misc]
            # Sync: the replica constructs the instance with a plain call. An ``async``
            # constructor of the user's is awaited in __modelplex_start__ instead, before the
            # app is built, which keeps Ray's order.
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                pending = cls.__init__(self, *args, **kwargs)
                if inspect.isawaitable(pending):
                    self._modelplex_pending_init = (pending, frozen_app_or_func)
                else:
                    ASGIAppReplicaWrapper.__init__(self, frozen_app_or_func)

            # No __del__ here: the replica runs the user's own __del__ (inherited) once, after
            # __modelplex_stop__, and disarms it (see Replica._finalize_instance).

        for attr in ("__name__", "__qualname__", "__module__", "__doc__"):
            if hasattr(cls, attr):
                setattr(ASGIIngressWrapper, attr, getattr(cls, attr))
        annotations = getattr(cls, "__annotations__", None)
        if annotations:
            ASGIIngressWrapper.__annotations__ = dict(annotations)
        ASGIIngressWrapper.__wrapped__ = cls  # type: ignore[attr-defined]
        return ASGIIngressWrapper

    return decorator


class ASGIAppReplicaWrapper:
    """What every ingress class shares: the app, its lifespan, and the replica's hooks."""

    def __init__(self, app_or_func: Any) -> None:
        if app_or_func is None:
            return  # late-bound: __serve_build_asgi_app__ supplies the app at start
        app = app_or_func() if inspect.isfunction(app_or_func) else app_or_func
        self._set_asgi_app(app)

    def _set_asgi_app(self, app: Any) -> None:
        from uvicorn.config import Config
        from uvicorn.lifespan.on import LifespanOn

        self._asgi_app = app
        # uvicorn's lifespan code runs the app's startup and shutdown, as under uvicorn itself.
        self._serve_asgi_lifespan = LifespanOn(
            Config(app, lifespan="on", log_level=None, log_config=None, access_log=False)
        )
        self._serve_asgi_lifespan.logger = _WarningsOnly(logger, {})

    @property
    def app(self) -> Any:
        return self._asgi_app

    @property
    def docs_path(self) -> str | None:
        fastapi = sys.modules.get("fastapi")
        if fastapi is not None and isinstance(self._asgi_app, fastapi.FastAPI):
            return self._asgi_app.docs_url
        return None

    async def __modelplex_start__(self) -> None:
        """Once per replica, before its first request: what Ray's replica does after the
        constructor (the late-bound app, the exception handlers, the lifespan startup)."""
        pending = self.__dict__.pop("_modelplex_pending_init", None)
        if pending is not None:
            await pending[0]
            ASGIAppReplicaWrapper.__init__(self, pending[1])
        build = getattr(self, SERVE_BUILD_ASGI_APP_METHOD, None)
        if not hasattr(self, "_asgi_app") and build is None:
            raise TypeError(
                "ASGI app was not provided to the wrapper and "
                f"`{SERVE_BUILD_ASGI_APP_METHOD}` is not defined on the deployment."
            )
        if build is not None:
            app = build()
            if inspect.isawaitable(app):
                app = await app
            if app is None:
                raise TypeError(f"`{SERVE_BUILD_ASGI_APP_METHOD}` must return an ASGI app.")
            self._set_asgi_app(app)
        add_handler = getattr(self._asgi_app, "add_exception_handler", None)
        handlers = getattr(self._asgi_app, "exception_handlers", {})
        if add_handler is not None and ModelplexError not in handlers:
            # A route that meets modelplex's own error (a model that failed to load, a busy
            # deployment behind a handle) answers its status, as a deployment without an
            # ingress does, rather than a bare 500. Ray does this for its 503s.
            add_handler(ModelplexError, _modelplex_error_response)
        lifespan = self._serve_asgi_lifespan
        await lifespan.startup()
        if lifespan.should_exit:
            raise RuntimeError("ASGI lifespan startup failed. Check replica logs for details.")

    async def __modelplex_asgi__(self, scope: dict, receive: Any, send: Any) -> None:
        """One HTTP request: a plain ASGI call of the app, with ``self`` for its routes."""
        state = self._serve_asgi_lifespan.state
        if "state" not in scope:
            scope["state"] = state.copy()  # what the lifespan yielded, as uvicorn passes it
        token = _current_instance.set(self)
        try:
            await self._asgi_app(scope, receive, send)
        finally:
            _current_instance.reset(token)

    async def __modelplex_stop__(self) -> None:
        """On a graceful stop: the app's lifespan shutdown (the replica then runs __del__)."""
        lifespan = getattr(self, "_serve_asgi_lifespan", None)
        if lifespan is not None and lifespan.startup_event.is_set():  # else nothing would answer
            await lifespan.shutdown()


class _WarningsOnly(logging.LoggerAdapter):
    """uvicorn's lifespan logs every startup at INFO; keep only what went wrong."""

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.WARNING and self.logger.isEnabledFor(level)


def _modelplex_error_response(request: Any, exc: Exception) -> Response:
    status, headers, body = error_response(exc)
    return Response(
        body, status_code=status, headers={k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
    )


def _is_fastapi(app: Any) -> bool:
    fastapi = sys.modules.get("fastapi")  # an app of FastAPI's means it is imported
    return fastapi is not None and isinstance(app, (fastapi.FastAPI, fastapi.APIRouter))


def _walk_fastapi_routes(router: Any, prefix: str = ""):
    """Yield ``(route, parent_router, prefix)`` for every API route under ``router``.

    From FastAPI 0.137, ``include_router`` no longer copies the routes into the parent: it
    appends one ``_IncludedRouter`` that refers to the included router, and keeps the
    ``include_router(prefix=...)`` on it. Recurse into those, carrying the prefix.
    """
    from fastapi.routing import APIRoute, APIWebSocketRoute

    included = _included_router_class()
    for route in router.routes:
        if isinstance(route, (APIRoute, APIWebSocketRoute)):
            yield route, router, prefix
        elif included is not None and isinstance(route, included):
            yield from _walk_fastapi_routes(
                route.original_router, prefix + route.include_context.prefix
            )


def make_fastapi_class_based_view(fastapi_app: Any, cls: type) -> None:
    """Turn the routes defined on ``cls`` (or its bases) into routes whose ``self`` is the
    replica's instance: its first parameter gets ``Depends(get_current_servable_instance)``.

    Modified from Ray Serve, itself modified from fastapi-utils' ``cbv``.
    """
    from fastapi import APIRouter, Depends
    from starlette.routing import compile_path

    # Routes bound to ``cls``: by qualname, since FastAPI allows several routes on methods of
    # one name; against the whole MRO (an inherited method keeps its base's qualname), with
    # the trailing dot so that class "A" does not claim the routes of class "AA".
    class_method_routes = [
        (route, parent, prefix)
        for route, parent, prefix in _walk_fastapi_routes(fastapi_app)
        if any(
            getattr(route.endpoint, "__qualname__", "").startswith(base.__qualname__ + ".")
            for base in cls.__mro__
            if base is not object
        )
    ]

    # Moved to a new router, included again, so that FastAPI analyses their new signatures.
    new_router = APIRouter()
    for route, parent, prefix in class_method_routes:
        parent.routes.remove(route)
        if prefix:  # the include_router prefix lived on the node we took the route out of
            full_path = prefix + route.path
            route.path = full_path
            route.path_regex, route.path_format, route.param_convertors = compile_path(full_path)

        # Before: def method(self, i): ...  After: def method(self=Depends(...), *, i): ...
        old_endpoint = route.endpoint
        old_signature = _resolved_signature(old_endpoint)
        old_parameters = list(old_signature.parameters.values())
        if len(old_parameters) == 0:
            raise ModelplexError(
                "Methods in FastAPI class-based view must have ``self`` as their first argument."
            )
        new_self_parameter = old_parameters[0].replace(default=Depends(get_current_servable_instance))
        new_parameters = [new_self_parameter] + [
            parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for parameter in old_parameters[1:]
        ]
        route.endpoint.__signature__ = old_signature.replace(parameters=new_parameters)
        route.endpoint._serve_cls = cls
        new_router.routes.append(route)
    fastapi_app.include_router(new_router)

    # Drop the routes of other class-based views on the same app.
    for route, parent, _prefix in list(_walk_fastapi_routes(fastapi_app)):
        serve_cls = getattr(route.endpoint, "_serve_cls", None)
        if serve_cls is not None and serve_cls != cls:
            parent.routes.remove(route)


def _resolve_annotations(fastapi_app: Any) -> None:
    """Give each route's endpoint its signature with the annotations evaluated.

    Under ``from __future__ import annotations`` they are strings that FastAPI evaluates in
    the function's globals, for included routers when the first request comes. A function
    shipped by value (defined in ``__main__``, or a method of the class) carries only the
    globals its code uses, which leaves out names used only in annotations: evaluate them
    now, where every name is at hand.
    """
    for route, _parent, _prefix in _walk_fastapi_routes(fastapi_app):
        endpoint = route.endpoint
        if inspect.isfunction(endpoint) and "__signature__" not in endpoint.__dict__:
            signature = inspect.signature(endpoint)
            if any(isinstance(p.annotation, str) for p in signature.parameters.values()):
                endpoint.__signature__ = _resolved_signature(endpoint)


def _resolved_signature(func: Callable) -> inspect.Signature:
    try:
        return inspect.signature(func, eval_str=True)
    except Exception:  # a name only a type checker sees: leave them all to FastAPI
        return inspect.signature(func)


def _included_router_class() -> type | None:
    try:
        from fastapi.routing import _IncludedRouter  # FastAPI >= 0.137
    except ImportError:
        return None
    return _IncludedRouter


# ---- pickling ------------------------------------------------------------------------------
# The app is pickled twice: frozen at decoration, then shipped to replicas with the class.
# Two of its parts do not pickle as they are; ``copyreg`` teaches both the standard pickler and
# cloudpickle how, in this process (unpickling needs nothing registered).


def _freeze(app: Any) -> Any:
    """A copy of the app, as Ray makes it, so that later changes to the app do not reach the
    deployment; but its classes and functions (closures aside) stay the very same objects. Loading a copy of a
    class in the process that defined it makes cloudpickle overwrite the original's methods
    with copies, and a copied function sees its module's globals as they were when the class
    was decorated: a helper defined further down the module would be a NameError in a route
    (it is, in Ray Serve)."""
    shared: list[Any] = []

    class Pickler(cloudpickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            # Closures are copied: FastAPI's own routes close over the app being frozen.
            if isinstance(obj, type) or (
                isinstance(obj, types.FunctionType) and obj.__closure__ is None
            ):
                shared.append(obj)
                return len(shared) - 1
            return None

    class Unpickler(pickle.Unpickler):
        def persistent_load(self, pid: Any) -> Any:
            return shared[pid]

    buffer = io.BytesIO()
    try:
        Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(app)
    except Exception as exc:
        raise TypeError(f"Failed to serialize the ASGI app: {exc}") from exc
    buffer.seek(0)
    return Unpickler(buffer).load()


def _register_reducers() -> None:
    # Starlette's State (app.state) answers every attribute from a dict it does not have yet
    # while being unpickled: endless recursion.
    copyreg.pickle(State, _reduce_state)
    included = _included_router_class() if "fastapi" in sys.modules else None
    if included is not None:
        copyreg.pickle(included, _reduce_included_router)


def _reduce_state(state: State) -> Any:
    return State, (dict(state._state),)


def _reduce_included_router(route: Any) -> Any:
    """FastAPI's ``_IncludedRouter`` holds a lock and caches of the included routes: rebuild it
    from its public fields; the caches fill again on the first request."""
    fields = {
        field.name: getattr(route, field.name)
        for field in dataclasses.fields(route)
        if field.init and not field.name.startswith("_")
    }
    return _rebuild, (type(route), fields)


def _rebuild(cls: type, fields: dict) -> Any:
    return cls(**fields)
