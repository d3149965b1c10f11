"""An HTTP proxy on a node away from the driver.

It routes on its own, with its own routers, exactly like the driver's proxy: only where it
learns things differs. Routes and replica sets arrive from the controller by long poll, and
replicas tell it what they hold on every reply. Rendezvous placement makes it agree with the
other proxies on where a cold model goes, without talking to them.

Model management (``/-/models``) stays on the driver's proxy, which sees every replica's cache.
"""

from __future__ import annotations

import logging

from .._obs import folder as _folder
from .._aio import LoopThread
from .._specs import ProxySpec, use_sys_path
from .stack import ProxyStack, build_proxy
from .._data.remote import RemoteDirectory, RemoteRoutes
from .._data.routers import RouterRegistry, install_registry

logger = logging.getLogger("modelplex.proxy")


class NodeProxy:
    def __init__(self, spec: ProxySpec) -> None:
        self._spec = spec
        use_sys_path(spec.sys_path)
        self._thread = LoopThread("modelplex-node-proxy")
        self._directory = RemoteDirectory(spec.controller_address, spec.secret)
        # This node's metrics folder: what this proxy and the node's replicas write.
        found = _folder.for_process(spec.metrics, spec.node_id)
        self._metrics, self._metrics_dir = found if found is not None else (None, "")
        self._registry = RouterRegistry(
            self._thread.loop, self._directory, spec.secret,
            events=self._metrics.router_events if self._metrics else None,
        )
        self._routes = RemoteRoutes(spec.controller_address, spec.secret)
        self._proxy: ProxyStack | None = None
        self.grpc_port: int | None = None  # where it serves gRPC, once started

    def start(self) -> int:
        """Serve, and return the port (``http_options.port`` or, for 0, the one picked)."""
        install_registry(self._registry)  # handles called by code in this process route here too
        return self._thread.run(self._start(), timeout=60)

    async def _start(self) -> int:
        await self._routes.start()
        self._proxy = build_proxy(
            self._routes, self._registry, self._spec.http_options,
            metrics=self._metrics, metrics_dir=self._metrics_dir,
            grpc_options=self._spec.grpc_options,
        )
        await self._proxy.start()
        port = self._proxy.server.port
        assert port is not None
        self.grpc_port = self._proxy.grpc.port if self._proxy.grpc is not None else None
        logger.info("Proxy listening on %s:%d.", self._spec.http_options.host, port)
        return port

    def stop(self) -> None:
        try:
            self._thread.run(self._stop(), timeout=30)
        finally:
            self._thread.stop()

    async def _stop(self) -> None:
        if self._proxy is not None:
            await self._proxy.stop()
        await self._registry.close()
        await self._routes.close()
        self._directory.close()
