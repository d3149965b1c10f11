"""The proxy stack, assembled in one place for the driver's proxy and the node proxies: the app,
its metrics middleware where metrics are on, and the uvicorn server under them; and, where
``grpc_options`` name services, the gRPC proxy and its server beside them."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .._config import HTTPOptions, gRPCOptions
from .._messages import DeploymentID
from .._obs import folder as _folder
from .._obs.metrics import Metrics
from .._types import ASGIApp
from .metrics import MetricsMiddleware
from .proxy import ProxyApp, Routers, always_logged
from .routes import ManagesModels, Routes, ShowsStatus
from .server import Proxy

if TYPE_CHECKING:  # grpc is imported only where gRPC is served
    from .grpc_server import GRPCServer


@dataclass(frozen=True)
class ProxyStack:
    app: ProxyApp  # to turn config deploys and the access log on and off while it serves
    server: Proxy  # to start and stop, and to ask its port
    grpc: "GRPCServer | None" = None  # the gRPC server, where gRPC is served

    async def start(self) -> None:
        await self.server.start()
        if self.grpc is not None:
            try:
                await self.grpc.start()
            except BaseException:
                await self.server.stop()
                raise

    async def stop(self) -> None:
        if self.grpc is not None:
            await self.grpc.stop()
        await self.server.stop()


def build_proxy(
    routes: Routes,
    registry: Routers,
    options: HTTPOptions,
    *,
    metrics: Metrics | None = None,
    metrics_dir: str = "",
    models: ManagesModels | None = None,
    pages: ShowsStatus | None = None,
    access_log_for: Callable[[DeploymentID], bool] = always_logged,
    grpc_options: gRPCOptions | None = None,
) -> ProxyStack:
    """The app and its server, not started. With ``metrics``, requests are counted and
    ``GET /-/metrics`` serves what ``metrics_dir`` (this node's folder) holds. With
    ``grpc_options`` that name services, gRPC is served too, on ``options.host``."""
    app = ProxyApp(
        routes, registry, options, models=models, pages=pages, access_log_for=access_log_for,
        metrics=functools.partial(_folder.exposition, metrics_dir) if metrics is not None else None,
    )
    served: ASGIApp = app if metrics is None else MetricsMiddleware(app, metrics)
    grpc = None
    if grpc_options is not None and grpc_options.enabled:
        try:
            from .grpc_proxy import GRPCProxy
            from .grpc_server import GRPCServer
        except ImportError as exc:
            raise ImportError(
                f"grpc_options name services, and serving gRPC needs grpcio: pip install "
                f"'modelplex[grpc]' ({exc})"
            ) from exc
        proxy = GRPCProxy(
            routes, registry, grpc_options, metrics=metrics,  # type: ignore[arg-type]
            access_log=lambda: app.access_log, access_log_for=access_log_for,
        )
        grpc = GRPCServer(proxy, grpc_options, options.host, options.max_body_bytes)
    return ProxyStack(app, Proxy(served, options), grpc)
