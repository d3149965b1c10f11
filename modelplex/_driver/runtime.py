"""The driver side: one runtime per process that calls ``serve.run``.

It owns a background event loop on which the controller, the HTTP proxy and this process's
routers run, so the user's thread stays plain synchronous Python. ``serve.run`` and
``serve.shutdown`` are thin sync edges over coroutines on that loop.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import logging
import os
import sys
import threading
from typing import Any, Callable

from .._aio import LoopThread
from .._control.backends import Backend, ProxyInfo, ProxySpec, make_backend
from .._obs import folder as _folder
from .._obs.metrics import Metrics
from .._config import (
    ClusterOptions,
    HTTPOptions,
    LoggingConfig,
    LogOptions,
    MetricsOptions,
    gRPCOptions,
    NodeResources,
)
from .._control.controller import Controller
from .._http.dashboard import StatusFeed
from .._deploy.deployer import ConfigDeployer
from .._user.build import build_app
from .._user.deployment import Application
from .._user.handle import DeploymentHandle
from .._obs.log_dirs import new_session_dir
from .._obs.logging import (
    apply_driver_logging,
    close_proxy_logging,
    configure_driver_logging,
    configure_proxy_logging,
)
from .._control.management import ModelManager
from .._http.proxy import ProxyApp
from .._http.server import Proxy
from .._http.stack import ProxyStack, build_proxy
from .._data.routers import RouterRegistry, install_registry
from .._control.status import collect
from .._types import ServeStatus
from .._data.channel import new_secret
from .._storage import node as _node_storage
from .._storage.config import StorageConfig

logger = logging.getLogger("modelplex")

_PROXY_REFRESH_S = 5.0


class Runtime:
    def __init__(
        self,
        http_options: HTTPOptions,
        cluster: ClusterOptions | None = None,
        *,
        backend: Backend | None = None,
        log_dir: str | None = None,
        log_options: LogOptions | None = None,
        metrics_options: MetricsOptions | None = None,
        storage: StorageConfig | None = None,
        grpc_options: gRPCOptions | None = None,
        node: NodeResources | None = None,
    ) -> None:
        configure_driver_logging()
        self.http_options = http_options
        self.grpc_options = grpc_options or gRPCOptions()
        self.cluster = cluster or ClusterOptions()
        self.node = node or NodeResources()  # as given; the backend detects the rest
        if log_dir is None:
            log_options = log_options or LogOptions.from_env(os.environ)
            log_dir = new_session_dir(log_options.keep_runs)
        self.log_dir = log_dir
        self._secret = new_secret()
        # The node's disk tier, read once: this process and every replica use the same one.
        self.storage = storage or StorageConfig.from_env()
        _node_storage.configure(self.storage)
        self.backend = backend or make_backend(self.cluster, self.node)
        self.proxies: list[ProxyInfo] = []
        self._follow_task: asyncio.Task | None = None
        self._thread = LoopThread("modelplex-driver")
        # Metrics: one folder per instance, one subfolder per node (see _obs/folder.py).
        options = metrics_options or MetricsOptions.from_env(os.environ)
        self.metrics: Metrics | None = None
        self.metrics_options: MetricsOptions | None = None
        self.metrics_dir = ""
        if options.enabled:
            self.metrics_options = dataclasses.replace(options, directory=_folder.new_instance_dir())
            self.metrics_dir = _folder.node_dir(self.metrics_options.directory, self.backend.node_id)
            _folder.install(self.metrics_dir)
            self.metrics = Metrics(self.metrics_options)
            _folder.publish(self.metrics.store, self.metrics_dir)
        self.controller = Controller(
            self.backend, secret=self._secret, log_dir=self.log_dir,
            events=self.metrics.controller_events() if self.metrics else None,
            metrics=self.metrics_options, storage=self.storage,
        )
        self.registry = RouterRegistry(
            self._thread.loop, self.controller, self._secret,
            events=self.metrics.router_events if self.metrics else None,
        )
        self.models = ModelManager(
            self.controller, self.registry, local_node=self.backend.name != "ray"
        )
        self.proxy: Proxy | None = None
        self._stack: ProxyStack | None = None
        self._proxy_app: ProxyApp | None = None
        self.deployer: ConfigDeployer | None = None
        self.observer: StatusFeed | None = None
        try:
            self._thread.run(self._start())
        except BaseException:
            try:  # undo what started (a backend's Ray, proxies), but report the first error
                self._thread.run(self._shutdown(), timeout=60)
            except Exception:
                logger.exception("Cleaning up after a failed start failed too.")
            self._thread.stop()
            self._drop_metrics()
            raise
        install_registry(self.registry)
        port = f" and HTTP on {http_options.host}:{self.http_port}" if self.proxy else ""
        if self.proxies and self.proxies[0].grpc_port is not None:
            port += f", gRPC on {http_options.host}:{self.proxies[0].grpc_port}"
        inventory = self.backend.inventory
        where = "" if inventory is None else ", node " + ", ".join(
            f"{amount:g} {name}" for name, amount in inventory.total().items()
        )
        logger.info(
            "Started modelplex (%s%s)%s; replica logs at %s", self.backend.name, where, port,
            self.log_dir,
        )

    async def _start(self) -> None:
        await self.controller.start(host=self.backend.listen_host)
        if self.http_options is not None:
            configure_proxy_logging(self.log_dir)
            self.observer = StatusFeed(self.status, events=self.controller.model_events)
            stack = build_proxy(
                self.controller.routes, self.registry, self.http_options,
                metrics=self.metrics, metrics_dir=self.metrics_dir, models=self.models,
                pages=self.observer, access_log_for=self.controller.access_log,
                grpc_options=self.grpc_options,
            )
            self._stack, self._proxy_app, self.proxy = stack, stack.app, stack.server
            await stack.start()
            assert self.proxy.port is not None
            self.proxies = [ProxyInfo(
                self.backend.node_id, self.http_options.host, self.proxy.port,
                stack.grpc.port if stack.grpc is not None else None,
            )]
            spec = ProxySpec(
                self.controller.address, self._secret, self.http_options, self.metrics_options,
                grpc_options=self.grpc_options, sys_path=tuple(p for p in sys.path if p),
            )
            self.proxies += (await self.backend.start_proxies(spec))
            if self.cluster.proxy_location == "every_node":
                self._follow_task = asyncio.get_running_loop().create_task(self._follow_nodes())

    async def _follow_nodes(self) -> None:
        """Keep one proxy per node as nodes join and leave (a no-op on one machine)."""
        while True:
            await asyncio.sleep(_PROXY_REFRESH_S)
            try:
                others = await self.backend.refresh_proxies()
            except Exception:
                logger.exception("Could not refresh the node proxies.")
                continue
            self.proxies = self.proxies[:1] + others

    @property
    def http_port(self) -> int | None:
        return self.proxy.port if self.proxy else None

    def run(self, app: Application, name: str, route_prefix: str) -> DeploymentHandle:
        specs, ingress = build_app(app, name)
        self._thread.run(self.controller.deploy(name, route_prefix, specs, ingress))
        return DeploymentHandle(ingress, name)

    def enable_deploys(self, on_shutdown: Callable[[], None], *, over_http: bool = True) -> None:
        """Take configs (``apply_config``; with ``over_http``, ``PUT /-/applications`` too),
        and stop on ``POST /-/shutdown`` by calling ``on_shutdown``: the CLI's instances."""
        app = self._proxy_app

        def set_logging(config: LoggingConfig) -> None:
            """The config's top-level logging_config: the proxy's access log and the driver."""
            if app is not None:
                app.set_access_log(config.enable_access_log)
            apply_driver_logging(config)

        self.deployer = ConfigDeployer(
            self.controller, self.models, self.http_options, on_shutdown, set_logging, self.node
        )
        if app is not None and over_http:
            app.enable_deploys(self.deployer)

    def apply_config(self, config: Any) -> dict[str, Any]:
        if self.deployer is None:
            raise RuntimeError("config deploys are not enabled in this process")
        return self._thread.run(self.deployer.apply(config))

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        """Run a coroutine on the driver loop from the user's thread."""
        return self._thread.run(coro, timeout)

    async def status(self) -> ServeStatus:
        return await collect(self.controller, self.registry, self.proxies)

    def delete(self, name: str) -> None:
        self._thread.run(self.controller.delete(name))

    def shutdown(self) -> None:
        install_registry(None)
        try:
            self._thread.run(self._shutdown(), timeout=120)
        finally:
            self._thread.stop()
            self._drop_metrics()

    def _drop_metrics(self) -> None:
        if self.metrics_options is not None:
            _folder.uninstall()
            _folder.remove_dir(self.metrics_options.directory)
            self.metrics_options = None

    async def _shutdown(self) -> None:
        if self._follow_task is not None:
            self._follow_task.cancel()
            await asyncio.gather(self._follow_task, return_exceptions=True)
        if self.observer is not None:
            self.observer.close()  # ends the live pages' streams, so the proxy stops at once
        if self._stack is not None:
            await self._stack.stop()
            close_proxy_logging()
        await self.registry.close()
        await self.controller.shutdown()


_lock = threading.RLock()
_runtime: Runtime | None = None


def get_runtime(
    http_options: Any = None, cluster: ClusterOptions | None = None, grpc_options: Any = None,
    **kwargs: Any,
) -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(
                HTTPOptions.from_value(http_options), cluster,
                grpc_options=gRPCOptions.from_value(grpc_options), **kwargs,
            )
        return _runtime


def current_runtime() -> Runtime | None:
    return _runtime


def shutdown() -> None:
    global _runtime
    with _lock:
        runtime, _runtime = _runtime, None
    if runtime is not None:
        runtime.shutdown()


atexit.register(shutdown)
