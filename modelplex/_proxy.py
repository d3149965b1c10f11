"""The HTTP proxy: a plain ASGI app under uvicorn.

It matches the longest route prefix, reads the model id header, hands the request to the
ingress deployment's router and copies the rendered response back. It never unpickles anything
from a client and drops client headers that the internal channel reserves.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import json
import logging
import random
import socket
import time
from urllib.parse import parse_qsl
from typing import Any, Awaitable, Callable

import uvicorn

from ._config import HTTPOptions
from ._errors import (
    BadRequestError,
    ClientDisconnectedError,
    HeadersTooLargeError,
    PayloadTooLargeError,
    PortInUseError,
    RequestTimeoutError,
    RouteNotFoundError,
    UnauthorizedError,
    error_response,
)
from ._http import request_from_scope
from ._http_protocol import bounded_protocol, head_limit
from ._management import ModelManager, check_limits, status_dicts
from ._messages import DeploymentID, HTTPResult
from ._metrics import ROUTE_KEY
from ._model_ids import model_id_from_headers
from ._router import RouterRegistry
from ._streams import ReplyStream

logger = logging.getLogger("modelplex.proxy")
access_logger = logging.getLogger("modelplex.access")

# A request still running after this long starts watching for its client's disconnect.
_WATCH_AFTER_S = 0.05

# Request ids only tie log lines together; they need not be secret, so no system call per request.
_ids = random.Random()


def _trace_id() -> str:
    return "%010x" % _ids.getrandbits(40)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Routes = Callable[[], dict[str, tuple[str, DeploymentID]]]

_CONFIG_BODY_LIMIT = 4 << 20


def match_route(path: str, prefixes: list[str]) -> str | None:
    """The longest prefix that ``path`` falls under, matching whole path segments."""
    best: str | None = None
    for prefix in prefixes:
        if prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            if best is None or len(prefix) > len(best):
                best = prefix
    return best


class ProxyApp:
    def __init__(
        self,
        routes: Routes,
        registry: RouterRegistry,
        options: HTTPOptions,
        models: ModelManager | None = None,
    ) -> None:
        self._routes = routes
        self._registry = registry
        self._options = options
        self._models = models
        # Set by the CLI's instances (modelplex run/start): PUT and GET /-/applications,
        # POST /-/shutdown. A ConfigDeployer (_deploy.py); None serves no such routes.
        self.deployer: Any = None
        self.access_log = True  # one INFO line per request (logging_config.enable_access_log)
        # Whether an ingress deployment's own logging_config keeps its access lines.
        self.access_log_for: Callable[[DeploymentID], bool] = lambda deployment_id: True
        # Set by the driver's runtime: GET /-/status, /-/dashboard, /-/events (_dashboard.py).
        self.observer: Any = None
        # GET /-/metrics: this node's Prometheus text, as (body, content type); None: off.
        self.metrics: Callable[[], tuple[bytes, str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.access_log or scope["type"] != "http" or scope["path"] == "/-/healthz":
            await self._serve(scope, receive, send)  # probes would drown the requests
            return
        start, status, access = time.perf_counter(), [0], _Access()

        async def logged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._serve(scope, receive, logged, access)
        finally:
            if not access.quiet:
                access.log(scope, status[0], time.perf_counter() - start)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, access: "_Access | None" = None
    ) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets are not served; uvicorn closes the connection
        path = scope["path"]
        try:
            self._check_headers(scope)
            if path.startswith("/-/"):
                await self._management(scope, receive, send)
                return
            result = await self._forward(scope, receive, access)
        except ClientDisconnectedError:
            # An ordinary event: the work was cancelled and nobody is left to answer.
            logger.debug("Client %s went away from %s; request cancelled.", _client(scope), path)
            return
        except Exception as exc:
            await _send_error(send, exc)
            return
        if type(result) is not HTTPResult:
            await _relay(result, scope, receive, send)
            return
        await send(
            {"type": "http.response.start", "status": result.status, "headers": list(result.headers)}
        )
        await send({"type": "http.response.body", "body": result.body})

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

    def _management_allowed(self, scope: Scope) -> bool:
        token = self._options.management_token
        if token is None:
            return True
        expected = f"Bearer {token}".encode()
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                return hmac.compare_digest(value, expected)
        return False

    async def _forward(
        self, scope: Scope, receive: Receive, access: "_Access | None"
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
            access.quiet = not self.access_log_for(ingress)
        scope[ROUTE_KEY] = (prefix, app_name)  # for the metrics (_metrics.MetricsMiddleware)
        model_id = model_id_from_headers(scope.get("headers", []))
        if access is not None:
            access.model_id = model_id
        body = await _read_body(receive, self._options.max_body_bytes)
        root_path = scope.get("root_path", "") + ("" if prefix == "/" else prefix.rstrip("/"))
        request = request_from_scope(scope, body, root_path)
        loop = asyncio.get_running_loop()
        call = loop.create_task(
            self._registry.router(ingress).call(
                "__call__", model_id=model_id, http=request,
                trace_id=access.request_id if access is not None else _trace_id(),
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
                gone = loop.create_task(_disconnected(receive))
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

    async def _management(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if path == "/-/healthz":
            await _send_text(send, 200, "success")
        elif path == "/-/routes":
            routes = {prefix: app for prefix, (app, _) in self._routes().items()}
            await _send_json(send, 200, routes)
        elif path == "/-/metrics" and self.metrics is not None:
            if not self._options.management_routes:
                raise RouteNotFoundError("management over HTTP is switched off")
            if not self._management_allowed(scope):
                raise UnauthorizedError("this route needs 'Authorization: Bearer <token>'")
            body, media = self.metrics()
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", media.encode()), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
        elif (path.startswith("/-/models") or path == "/-/artifacts") and self._models is not None:
            if not self._options.management_routes:
                raise RouteNotFoundError("model management over HTTP is switched off")
            if not self._management_allowed(scope):
                raise UnauthorizedError("model management needs 'Authorization: Bearer <token>'")
            await _send_json(send, 200, await self._manage_models(path, method, scope, receive))
        elif path in ("/-/status", "/-/dashboard", "/-/events") and self.observer is not None:
            if not self._options.management_routes:
                raise RouteNotFoundError("management over HTTP is switched off")
            await self.observer.serve(scope, receive, send, self._options.management_token)
        elif path in ("/-/applications", "/-/shutdown") and self.deployer is not None:
            if not self._options.management_routes:
                raise RouteNotFoundError("management over HTTP is switched off")
            if not self._management_allowed(scope):
                raise UnauthorizedError("this route needs 'Authorization: Bearer <token>'")
            await _send_json(send, 200, await self._manage_instance(path, method, receive))
        else:
            raise RouteNotFoundError(f"no management route {path!r}")

    async def _manage_instance(self, path: str, method: str, receive: Receive) -> Any:
        """GET /-/applications: what runs; PUT /-/applications: apply a config (JSON, as
        ``modelplex deploy`` sends it); POST /-/shutdown: stop this instance."""
        if path == "/-/applications" and method == "GET":
            return self.deployer.status()
        if path == "/-/applications" and method == "PUT":
            body = await _read_body(receive, _CONFIG_BODY_LIMIT)
            try:
                config = json.loads(body)
            except ValueError:
                raise BadRequestError("the request body must be a config as JSON") from None
            return await self.deployer.apply(config)
        if path == "/-/shutdown" and method == "POST":
            self.deployer.shutdown()
            return {"ok": True}
        raise RouteNotFoundError(f"no management route {method} {path!r}")

    async def _manage_models(self, path: str, method: str, scope: Scope, receive: Receive) -> Any:
        """GET /-/models lists; POST /-/models/{preload,pin,unpin,unload,configure} acts;
        GET /-/artifacts lists each node's disk cache."""
        assert self._models is not None
        if path == "/-/artifacts" and method == "GET":
            return status_dicts(await self._models.list_artifacts())
        if path == "/-/models" and method == "GET":
            query = dict(parse_qsl(scope.get("query_string", b"").decode()))
            statuses = await self._models.list_models(query.get("app"), query.get("deployment"))
            return status_dicts(statuses)
        op = path[len("/-/models/"):]
        if method != "POST" or op not in ("preload", "pin", "unpin", "unload", "configure"):
            raise RouteNotFoundError(f"no management route {method} {path!r}")
        body = await _read_body(receive, 1 << 20)
        try:
            args = json.loads(body or b"{}")
        except ValueError:
            raise BadRequestError("the request body must be a JSON object") from None
        if not isinstance(args, dict):
            raise BadRequestError("the request body must be a JSON object")
        app, deployment = args.get("app", "default"), args.get("deployment")
        if op == "configure":
            limits = args.get("max_num_models_per_replica"), args.get("max_memory_bytes")
            try:
                check_limits(*limits)
            except (TypeError, ValueError) as exc:
                raise BadRequestError(str(exc)) from None
            await self._models.configure(app, deployment, *limits)
            return {"ok": True}
        model_id = args.get("model_id")
        if not isinstance(model_id, str) or not model_id:
            raise BadRequestError("model_id (a non-empty string) is required")
        if op in ("preload", "pin"):
            disk_only = args.get("disk_only", False)
            if not isinstance(disk_only, bool):
                raise BadRequestError(f"disk_only must be true or false, got {disk_only!r}")
            if disk_only and op == "preload":
                op = "warm"
            replicas = await self._models.place(op, model_id, app, deployment, args.get("replicas", 1))
        else:
            replicas = await self._models.release(op, model_id, app, deployment)
        return {"replicas": replicas}


async def _relay(stream: ReplyStream, scope: Scope, receive: Receive, send: Send) -> None:
    """Copy a streamed response to the client chunk by chunk, as the replica produces it.

    The client's pace sets the stream's: ``send`` waits while the socket's buffer is full, and
    the replica gets no credit meanwhile. A client that goes away closes the stream, which
    cancels it at the replica. A stream that fails midway ends early where the client can tell:
    an SSE stream gets an ``error`` event, any other stream is cut off before its last chunk."""
    items = await stream.next_batch()  # a stream begins with its head
    head: HTTPResult = items[0]
    await send({"type": "http.response.start", "status": head.status, "headers": list(head.headers)})
    gone = asyncio.get_running_loop().create_task(_disconnected(receive))
    gone.add_done_callback(lambda _: stream.close(ClientDisconnectedError()))
    try:
        body = items[1:]
        while True:
            for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            body = await stream.next_batch()
            if not body:
                break
    except ClientDisconnectedError:
        logger.debug("Client %s went away from %s; stream cancelled.", _client(scope), scope["path"])
        return
    except Exception as exc:
        logger.warning(
            "The stream of %s failed midway: %s: %s", scope["path"], type(exc).__name__, exc
        )
        if not _is_event_stream(head.headers):
            return  # uvicorn closes the connection: the client sees the body end early
        event = json.dumps({"error": type(exc).__name__, "message": str(exc)})
        await send({"type": "http.response.body",
                    "body": f"event: error\ndata: {event}\n\n".encode(), "more_body": True})
    finally:
        gone.cancel()
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _is_event_stream(headers: Any) -> bool:
    for name, value in headers:
        if name.lower() == b"content-type":
            return value.split(b";")[0].strip().lower() == b"text/event-stream"
    return False


class _CutStreams(logging.Filter):
    """uvicorn's line for a response left incomplete: ours, a stream that failed midway, says
    it (once, with the error) already."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "ASGI callable returned without completing response."


class _Access:
    """One request's access line; ``_forward`` fills in what it learns on the way."""

    __slots__ = ("request_id", "application", "deployment", "replica", "model_id", "quiet")

    def __init__(self) -> None:
        self.request_id = _trace_id()  # the replica's lines show the same id
        self.application = self.deployment = self.replica = "-"
        self.model_id = ""
        self.quiet = False  # the ingress deployment's logging_config turned its access log off

    def served_by(self, replica_id: str) -> None:
        self.replica = replica_id

    def log(self, scope: Scope, status: int, seconds: float) -> None:
        ms = seconds * 1000
        method, path = scope["method"], scope["path"]
        access_logger.info(
            "%s %s %s %.1fms", method, path, status or "-", ms,
            extra={
                "access": True, "application": self.application, "deployment": self.deployment, "replica": self.replica,
                "request_id": self.request_id, "route": path, "model_id": self.model_id or "-",
                "method": method, "status": status or None, "latency_ms": round(ms, 1),
                "client": _client(scope),
            },
        )


async def _disconnected(receive: Receive) -> None:
    """Return once the client has gone away (the body is read before this runs)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _cancel(task: asyncio.Task) -> None:
    """Cancel ``task`` and wait until it has ended, so the cancel reached the replica."""
    task.cancel()
    await asyncio.wait((task,))
    if not task.cancelled():
        task.exception()  # it ended on its own just before; nobody waits for its outcome


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_text(send: Send, status: int, text: str, media: str = "text/plain") -> None:
    body = text.encode()
    headers = [
        (b"content-type", f"{media}; charset=utf-8".encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Send, status: int, value: Any) -> None:
    await _send_text(send, status, json.dumps(value), "application/json")


async def _send_error(send: Send, exc: BaseException) -> None:
    status, headers, body = error_response(exc)
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
    await send({"type": "http.response.body", "body": body})


class Proxy:
    """uvicorn serving ``ProxyApp`` on the driver loop, on a socket we bind ourselves."""

    def __init__(self, app: ProxyApp, options: HTTPOptions) -> None:
        self._app = app
        self._options = options
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None
        self.port: int | None = None

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self._options.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._options.host, self._options.port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(self._options.host, self._options.port) from None
            raise OSError(
                exc.errno,
                f"cannot listen on {self._options.host}:{self._options.port}: {exc.strerror}",
            ) from None
        sock.listen(2048)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            http=bounded_protocol(head_limit(self._options)),
            timeout_keep_alive=30,
            server_header=False,
        )
        uvicorn_errors = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, _CutStreams) for f in uvicorn_errors.filters):
            uvicorn_errors.addFilter(_CutStreams())
        self._server = uvicorn.Server(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the HTTP proxy stopped while starting")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, 10)
        except (asyncio.TimeoutError, Exception):
            self._task.cancel()
