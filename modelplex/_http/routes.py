"""The proxy's management routes (``/-/...``): one table, one guard, one token check.

Each route names its path, its methods, its handler and its ``Guard``: whether it is switched
off with ``http_options.management_routes`` and where it takes the token from (``tokens.py``).
A request is checked in one order for every route: switched off (404), token (401), method
(404). A route is in the table only while the collaborator it needs is there; config deploys
join later (``enable_deploys``), once the CLI's instance has its deployer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from typing import Any, Awaitable, Callable, Protocol
from urllib.parse import parse_qsl, quote

from .._config import HTTPOptions, check_cache_limits
from .._errors import BadRequestError, RouteNotFoundError, UnauthorizedError
from .._messages import DeploymentID
from .._types import AdminOp, ArtifactStatus, ModelStatus, Receive, Scope, Send, status_dicts
from .asgi import read_body, send_body, send_json, send_text
from .dashboard import page
from .tokens import COOKIE, Tokens, presented_token, token_accepted

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
Routes = Callable[[], dict[str, tuple[str, DeploymentID]]]  # prefix -> (app, ingress)
Exposition = Callable[[], tuple[bytes, str]]  # this node's Prometheus text and its content type

_MODELS_BODY_LIMIT = 1 << 20
_CONFIG_BODY_LIMIT = 4 << 20
_NO_STORE = ((b"cache-control", b"no-store"),)


class ManagesModels(Protocol):
    """What the model routes ask of the driver's model manager (``_control.management``)."""

    async def list_models(self, app: str | None, deployment: str | None) -> list[ModelStatus]: ...

    async def list_artifacts(self) -> list[ArtifactStatus]: ...

    async def place(
        self, op: AdminOp, model_id: str, app: str, deployment: str | None, replicas: int
    ) -> list[str]: ...

    async def release(
        self, op: AdminOp, model_id: str, app: str, deployment: str | None
    ) -> list[str]: ...

    async def configure(
        self, app: str, deployment: str | None, max_models: Any, max_bytes: Any
    ) -> None: ...

    async def set_weights(self, app: str, deployment: str | None, weights: Any) -> dict[str, float]: ...


class DeploysConfigs(Protocol):
    """What the instance routes ask of the CLI's config deployer (``_deploy.deployer``)."""

    def status(self) -> dict[str, Any]: ...

    async def apply(self, config: Any) -> dict[str, Any]: ...

    def shutdown(self) -> None: ...


class ShowsStatus(Protocol):
    """What the page routes ask of the status feed (``dashboard.StatusFeed``)."""

    async def status(self) -> dict[str, Any]: ...

    async def stream(self, receive: Receive, send: Send) -> None: ...


@dataclass(frozen=True)
class Guard:
    """Who may use a route, and what a refusal says (``{path}`` stands for the path)."""

    tokens: Tokens
    off: str  # the 404 while management over HTTP is switched off
    refused: str  # the 401 without a good token


INSTANCE = Guard(
    Tokens.HEADER, "management over HTTP is switched off",
    "this route needs 'Authorization: Bearer <token>'",
)
MODELS = Guard(
    Tokens.HEADER, "model management over HTTP is switched off",
    "model management needs 'Authorization: Bearer <token>'",
)
PAGES = Guard(
    Tokens.BROWSER, "management over HTTP is switched off",
    "{path} needs 'Authorization: Bearer <token>' (a browser: {path}?token=<token>)",
)


@dataclass(frozen=True)
class Route:
    path: str
    methods: frozenset[str] | None  # None: any method
    handler: Handler
    guard: Guard | None  # None: open to anyone, switched off never (health probes)
    prefix: bool = False  # also every path under ``path`` that no route names exactly


def match(table: tuple[Route, ...], path: str) -> list[Route]:
    """The routes of ``path``: those naming it, else the prefix routes it falls under."""
    exact = [r for r in table if r.path == path]
    return exact or [r for r in table if r.prefix and path.startswith(r.path)]


class Management:
    """Serves ``/-/...`` from the table its collaborators make."""

    def __init__(
        self,
        routes: Routes,
        options: HTTPOptions,
        *,
        models: ManagesModels | None = None,
        pages: ShowsStatus | None = None,
        metrics: Exposition | None = None,
        deployer: DeploysConfigs | None = None,
    ) -> None:
        self._options = options
        self._base = (
            open_routes(routes)
            + (metrics_routes(metrics) if metrics is not None else ())
            + (model_routes(models) if models is not None else ())
            + (page_routes(pages, options) if pages is not None else ())
        )
        self._table = self._base
        if deployer is not None:
            self.enable_deploys(deployer)

    def enable_deploys(self, deployer: DeploysConfigs) -> None:
        """Serve ``/-/applications`` and ``/-/shutdown`` from now on (the CLI's instances)."""
        self._table = self._base + instance_routes(deployer)  # a request sees one or the other

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        found = match(self._table, path)
        if not found:
            raise RouteNotFoundError(f"no management route {path!r}")
        guard = found[0].guard
        if guard is not None:
            if not self._options.management_routes:
                raise RouteNotFoundError(guard.off)
            if not token_accepted(scope, self._options.management_token, guard.tokens):
                raise UnauthorizedError(guard.refused.format(path=path))
        for route in found:
            if route.methods is None or method in route.methods:
                await route.handler(scope, receive, send)
                return
        raise RouteNotFoundError(f"no management route {method} {path!r}")


_GET, _POST, _PUT = frozenset({"GET"}), frozenset({"POST"}), frozenset({"PUT"})


def open_routes(routes: Routes) -> tuple[Route, ...]:
    return (
        Route("/-/healthz", None, _healthz, None),
        Route("/-/routes", None, partial(_list_routes, routes), None),
    )


def metrics_routes(metrics: Exposition) -> tuple[Route, ...]:
    return (Route("/-/metrics", None, partial(_scrape, metrics), INSTANCE),)


def model_routes(models: ManagesModels) -> tuple[Route, ...]:
    return (
        Route("/-/models", _GET, partial(_list_models, models), MODELS),
        Route("/-/artifacts", _GET, partial(_list_artifacts, models), MODELS),
        Route("/-/models/preload", _POST, partial(_place, models, AdminOp.PRELOAD), MODELS),
        Route("/-/models/pin", _POST, partial(_place, models, AdminOp.PIN), MODELS),
        Route("/-/models/unpin", _POST, partial(_release, models, AdminOp.UNPIN), MODELS),
        Route("/-/models/unload", _POST, partial(_release, models, AdminOp.UNLOAD), MODELS),
        Route("/-/models/configure", _POST, partial(_configure, models), MODELS),
        Route("/-/models/weights", _POST, partial(_weights, models), MODELS),
        Route("/-/models", None, _unknown, MODELS, prefix=True),  # guarded, then 404
    )


def page_routes(pages: ShowsStatus, options: HTTPOptions) -> tuple[Route, ...]:
    return (
        Route("/-/status", _GET, partial(_status, pages), PAGES),
        Route("/-/dashboard", _GET, partial(_dashboard, options.management_token), PAGES),
        Route("/-/events", _GET, partial(_events, pages), PAGES),
    )


def instance_routes(deployer: DeploysConfigs) -> tuple[Route, ...]:
    return (
        Route("/-/applications", _GET, partial(_applications, deployer), INSTANCE),
        Route("/-/applications", _PUT, partial(_apply, deployer), INSTANCE),
        Route("/-/shutdown", _POST, partial(_shutdown, deployer), INSTANCE),
    )


# ---- open, and the metrics ----------------------------------------------------------------------


async def _healthz(scope: Scope, receive: Receive, send: Send) -> None:
    await send_text(send, 200, "success")


async def _list_routes(routes: Routes, scope: Scope, receive: Receive, send: Send) -> None:
    await send_json(send, 200, {prefix: app for prefix, (app, _) in routes().items()})


async def _unknown(scope: Scope, receive: Receive, send: Send) -> None:
    raise RouteNotFoundError(f"no management route {scope['method']} {scope['path']!r}")


async def _scrape(metrics: Exposition, scope: Scope, receive: Receive, send: Send) -> None:
    body, media = metrics()
    await send_body(send, 200, body, media.encode())


# ---- models: GET /-/models, GET /-/artifacts, POST /-/models/<op> -------------------------------


async def _list_models(models: ManagesModels, scope: Scope, receive: Receive, send: Send) -> None:
    query = dict(parse_qsl(scope.get("query_string", b"").decode()))
    statuses = await models.list_models(query.get("app"), query.get("deployment"))
    await send_json(send, 200, status_dicts(statuses))


async def _list_artifacts(
    models: ManagesModels, scope: Scope, receive: Receive, send: Send
) -> None:
    await send_json(send, 200, status_dicts(await models.list_artifacts()))


async def _place(
    models: ManagesModels, op: AdminOp, scope: Scope, receive: Receive, send: Send
) -> None:
    """``{"model_id", "app", "deployment", "replicas", "disk_only"}``; a preload with
    ``disk_only`` warms the disk tier alone."""
    args = await _json_object(receive)
    model_id = _model_id(args)
    disk_only = args.get("disk_only", False)
    if not isinstance(disk_only, bool):
        raise BadRequestError(f"disk_only must be true or false, got {disk_only!r}")
    if disk_only and op is AdminOp.PRELOAD:
        op = AdminOp.WARM
    replicas = await models.place(
        op, model_id, args.get("app", "default"), args.get("deployment"), args.get("replicas", 1)
    )
    await send_json(send, 200, {"replicas": replicas})


async def _release(
    models: ManagesModels, op: AdminOp, scope: Scope, receive: Receive, send: Send
) -> None:
    """``{"model_id", "app", "deployment"}``."""
    args = await _json_object(receive)
    model_id = _model_id(args)
    replicas = await models.release(op, model_id, args.get("app", "default"), args.get("deployment"))
    await send_json(send, 200, {"replicas": replicas})


async def _configure(models: ManagesModels, scope: Scope, receive: Receive, send: Send) -> None:
    """``{"app", "deployment", "max_num_models_per_replica", "max_memory_bytes"}``."""
    args = await _json_object(receive)
    limits = args.get("max_num_models_per_replica"), args.get("max_memory_bytes")
    try:
        check_cache_limits(*limits)
    except (TypeError, ValueError) as exc:
        raise BadRequestError(str(exc)) from None
    await models.configure(args.get("app", "default"), args.get("deployment"), *limits)
    await send_json(send, 200, {"ok": True})


async def _weights(models: ManagesModels, scope: Scope, receive: Receive, send: Send) -> None:
    """``{"app", "deployment", "model_weights": {model id: weight}}``: replaces the weights."""
    args = await _json_object(receive)
    if "model_weights" not in args:
        raise BadRequestError("model_weights (a JSON object of model id -> weight) is required")
    weights = await models.set_weights(
        args.get("app", "default"), args.get("deployment"), args["model_weights"]
    )
    await send_json(send, 200, {"model_weights": weights})


async def _json_object(receive: Receive) -> dict[str, Any]:
    body = await read_body(receive, _MODELS_BODY_LIMIT)
    try:
        args = json.loads(body or b"{}")
    except ValueError:
        raise BadRequestError("the request body must be a JSON object") from None
    if not isinstance(args, dict):
        raise BadRequestError("the request body must be a JSON object")
    return args


def _model_id(args: dict[str, Any]) -> str:
    model_id = args.get("model_id")
    if not isinstance(model_id, str) or not model_id:
        raise BadRequestError("model_id (a non-empty string) is required")
    return model_id


# ---- the pages: GET /-/status, /-/dashboard, /-/events ------------------------------------------


async def _status(pages: ShowsStatus, scope: Scope, receive: Receive, send: Send) -> None:
    await send_json(send, 200, await pages.status(), _NO_STORE)


async def _dashboard(token: str | None, scope: Scope, receive: Receive, send: Send) -> None:
    """The page; a token that came as ``?token=`` goes into the page's cookie."""
    headers = list(_NO_STORE)
    if token is not None and presented_token(scope, Tokens.BROWSER)[1]:
        headers.append((
            b"set-cookie",
            f"{COOKIE}={quote(token, safe='')}; Path=/-/; HttpOnly; SameSite=Strict".encode(),
        ))
    await send_text(send, 200, page(), "text/html", headers)


async def _events(pages: ShowsStatus, scope: Scope, receive: Receive, send: Send) -> None:
    await pages.stream(receive, send)


# ---- the instance: GET and PUT /-/applications, POST /-/shutdown --------------------------------


async def _applications(
    deployer: DeploysConfigs, scope: Scope, receive: Receive, send: Send
) -> None:
    """What runs."""
    await send_json(send, 200, deployer.status())


async def _apply(deployer: DeploysConfigs, scope: Scope, receive: Receive, send: Send) -> None:
    """Apply a config (JSON, as ``modelplex deploy`` sends it)."""
    body = await read_body(receive, _CONFIG_BODY_LIMIT)
    try:
        config = json.loads(body)
    except ValueError:
        raise BadRequestError("the request body must be a config as JSON") from None
    await send_json(send, 200, await deployer.apply(config))


async def _shutdown(deployer: DeploysConfigs, scope: Scope, receive: Receive, send: Send) -> None:
    deployer.shutdown()
    await send_json(send, 200, {"ok": True})
