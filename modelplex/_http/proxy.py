"""The HTTP proxy app: a plain ASGI app under uvicorn (``server.py``).

It checks the request head against the limits, matches the longest route prefix, reads the
model id header, hands the request to the ingress deployment's router and copies the rendered
response back (whole, or streamed by ``relay.py``). A client that goes away or a request past
its time limit cancels the call. ``/-/...`` is the management table's (``routes.py``). It never
unpickles anything from a client and drops client headers that the internal channel reserves.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Protocol

from .._config import HTTPOptions
from .._data.replies import ReplyStream
from .._errors import (
    ClientDisconnectedError,
    HeadersTooLargeError,
    PayloadTooLargeError,
    RequestTimeoutError,
    RouteNotFoundError,
)
from .._messages import DeploymentID, HTTPRequest, HTTPResult
from .._model_ids import model_id_from_headers
from .._types import Receive, Scope, Send
from .access import Access, logged, trace_id
from .asgi import client, disconnected, lifespan, read_body, send_error
from .conversions import request_from_scope
from .metrics import ROUTE_KEY
from .relay import relay
from .sockets import refuse, serve_socket
from .routes import DeploysConfigs, Exposition, Management, ManagesModels, Routes, ShowsStatus

logger = logging.getLogger("modelplex.proxy")

# A request still running after this long starts watching for its client's disconnect.
_WATCH_AFTER_S = 0.05


class IngressRouter(Protocol):
    """What the proxy uses of an ingress deployment's router (``_data.router.Router``)."""

    async def call(
        self,
        method: str,
        *,
        model_id: str,
        http: HTTPRequest,
        trace_id: str,
        on_replica: Callable[[str], None] | None,
        stream: bool = False,
    ) -> Any: ...


class Routers(Protocol):
    """This process's routers, one per deployment (``_data.routers.RouterRegistry``)."""

    def router(self, deployment_id: DeploymentID) -> IngressRouter: ...


def match_route(path: str, prefixes: list[str]) -> str | None:
    """The longest prefix that ``path`` falls under, matching whole path segments."""
    best: str | None = None
    for prefix in prefixes:
        if prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            if best is None or len(prefix) > len(best):
                best = prefix
    return best


def always_logged(deployment_id: DeploymentID) -> bool:
    """Every ingress keeps its access lines (where no controller says otherwise)."""
    return True


class ProxyApp:
    """The proxy's ASGI app. What it serves besides the applications depends on what it is
    given: ``models`` (the driver's model manager), ``pages`` (the status feed), ``metrics``
    (this node's exposition), ``deployer`` (a CLI instance's; or later, ``enable_deploys``)."""

    def __init__(
        self,
        routes: Routes,
        registry: Routers,
        options: HTTPOptions,
        *,
        models: ManagesModels | None = None,
        pages: ShowsStatus | None = None,
        metrics: Exposition | None = None,
        deployer: DeploysConfigs | None = None,
        access_log_for: Callable[[DeploymentID], bool] = always_logged,
    ) -> None:
        self._routes = routes
        self._registry = registry
        self._options = options
        # Whether an ingress deployment's own logging_config keeps its access lines.
        self._access_log_for = access_log_for
        self._access_log = True  # one INFO line per request (logging_config.enable_access_log)
        self._management = Management(
            routes, options, models=models, pages=pages, metrics=metrics, deployer=deployer
        )

    def enable_deploys(self, deployer: DeploysConfigs) -> None:
        """Serve ``PUT``/``GET /-/applications`` and ``POST /-/shutdown`` from now on: a CLI
        instance makes its deployer once the proxy runs."""
        self._management.enable_deploys(deployer)

    def set_access_log(self, enabled: bool) -> None:
        """A config's top-level ``logging_config.enable_access_log``."""
        self._access_log = enabled

    @property
    def access_log(self) -> bool:
        """Whether access lines are written (the gRPC proxy follows it too)."""
        return self._access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._access_log or scope["type"] != "http" or scope["path"] == "/-/healthz":
            await self._serve(scope, receive, send)  # probes would drown the requests
            return
        await logged(self._serve, scope, receive, send)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, access: Access | None = None
    ) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await self._socket(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        try:
            self._check_headers(scope)
            if path.startswith("/-/"):
                await self._management.serve(scope, receive, send)
                return
            result = await self._forward(scope, receive, access)
        except ClientDisconnectedError:
            # An ordinary event: the work was cancelled and nobody is left to answer.
            logger.debug("Client %s went away from %s; request cancelled.", client(scope), path)
            return
        except Exception as exc:
            await send_error(send, exc)
            return
        if type(result) is not HTTPResult:
            await relay(result, scope, receive, send)
            return
        await send(
            {"type": "http.response.start", "status": result.status, "headers": list(result.headers)}
        )
        await send({"type": "http.response.body", "body": result.body})

    async def _socket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket, to the ingress app of its route (``sockets.py``); the model id header of
        its upgrade request places it, and holds the model in use while it is open."""
        try:
            self._check_headers(scope)
            routes = self._routes()
            prefix = match_route(scope["path"], list(routes))
            if prefix is None:
                raise RouteNotFoundError(f"no application serves the path {scope['path']!r}")
            model_id = model_id_from_headers(scope.get("headers", []))
        except Exception as exc:
            await refuse(send, str(exc))
            return
        app_name, ingress = routes[prefix]
        access = Access() if self._access_log else None
        if access is not None:
            access.application, access.deployment = app_name, str(ingress)
            access.quiet = not self._access_log_for(ingress)
            access.model_id = model_id
        root_path = scope.get("root_path", "") + ("" if prefix == "/" else prefix.rstrip("/"))
        request = request_from_scope(scope, b"", root_path)
        timeout = self._options.request_timeout_s

        async def open_call() -> ReplyStream:
            call = self._registry.router(ingress).call(
                "__call__", model_id=model_id, http=request,
                trace_id=access.request_id if access is not None else trace_id(),
                on_replica=access.served_by if access is not None else None, stream=True,
            )
            if timeout is None:
                return await call
            try:  # the app must answer the handshake within the request time limit
                return await asyncio.wait_for(call, timeout)
            except asyncio.TimeoutError:
                raise RequestTimeoutError(timeout) from None

        await serve_socket(open_call, scope, receive, send, access)

    def _check_headers(self, scope: Scope) -> None:
        """The exact limits, once the head is complete (the protocol bounds it on the way in)."""
        headers = scope.get("headers", ())
        if len(headers) > self._options.max_header_count:
            raise HeadersTooLargeError(f"more than {self._options.max_header_count} headers")
        size = 0
        too_long = False
        for name, value in headers:  # one pass: this runs for every request
            size += len(name) + len(value)
            if name == b"content-length" and value.isdigit():
                too_long = too_long or int(value) > self._options.max_body_bytes
        if size > self._options.max_header_bytes:
            raise HeadersTooLargeError(f"headers larger than {self._options.max_header_bytes} bytes")
        if too_long:
            raise PayloadTooLargeError(f"request body is larger than {self._options.max_body_bytes} bytes")

    async def _forward(
        self, scope: Scope, receive: Receive, access: Access | None
    ) -> HTTPResult | ReplyStream:
        """The ingress's reply: whole, or a stream (then ``request_timeout_s`` bounds the time to
        its head, not its length)."""
        routes = self._routes()
        prefix = match_route(scope["path"], list(routes))
        if prefix is None:
            raise RouteNotFoundError(f"no application serves the path {scope['path']!r}")
        app_name, ingress = routes[prefix]
        if access is not None:
            access.application, access.deployment = app_name, str(ingress)
            access.quiet = not self._access_log_for(ingress)
        scope[ROUTE_KEY] = (prefix, app_name)  # for the metrics (metrics.MetricsMiddleware)
        model_id = model_id_from_headers(scope.get("headers", []))
        if access is not None:
            access.model_id = model_id
        body = await read_body(receive, self._options.max_body_bytes)
        root_path = scope.get("root_path", "") + ("" if prefix == "/" else prefix.rstrip("/"))
        request = request_from_scope(scope, body, root_path)
        loop = asyncio.get_running_loop()
        call = loop.create_task(
            self._registry.router(ingress).call(
                "__call__", model_id=model_id, http=request,
                trace_id=access.request_id if access is not None else trace_id(),
                on_replica=access.served_by if access is not None else None,
            )
        )
        # A client that goes away, or a request past its time limit, cancels the call, down to
        # the replica's task (or its place in the router's queue). Most requests end before a
        # disconnect could matter, so the watcher (a task) starts only after _WATCH_AFTER_S.
        timeout = self._options.request_timeout_s
        gone: asyncio.Task | None = None
        try:
            first = _WATCH_AFTER_S if timeout is None else min(_WATCH_AFTER_S, timeout)
            await asyncio.wait((call,), timeout=first)
            if not call.done():
                gone = loop.create_task(disconnected(receive))
                rest = None if timeout is None else max(0.0, timeout - first)
                await asyncio.wait((call, gone), timeout=rest, return_when=asyncio.FIRST_COMPLETED)
            if call.done():
                return call.result()
            if gone is not None and gone.done():
                raise ClientDisconnectedError()
            raise RequestTimeoutError(timeout)  # type: ignore[arg-type]
        finally:
            if gone is not None:
                gone.cancel()
            if not call.done():
                await _cancel(call)


async def _cancel(task: asyncio.Task) -> None:
    """Cancel ``task`` and wait until it has ended, so the cancel reached the replica."""
    task.cancel()
    await asyncio.wait((task,))
    if not task.cancelled():
        task.exception()  # it ended on its own just before; nobody waits for its outcome
