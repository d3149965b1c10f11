"""The driver side: one runtime per process that calls ``serve.run``.

It owns a background event loop on which the controller, the HTTP proxy and this process's
routers run, so the user's thread stays plain synchronous Python. ``serve.run`` and
``serve.shutdown`` are thin sync edges over coroutines on that loop.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import functools
import logging
import os
import threading
from typing import Any, Callable

import cloudpickle

from ._aio import LoopThread
from ._backends import Backend, ProxyInfo, ProxySpec, make_backend
from . import _metrics
from ._config import ClusterOptions, HTTPOptions, LoggingConfig, LogOptions, MetricsOptions
from ._controller import Controller, DeploymentSpec
from ._dashboard import StatusFeed
from ._deploy import ConfigDeployer
from ._deployment import Application, Deployment
from ._errors import ModelplexError
from ._handle import DeploymentHandle
from ._ingress import ASGIAppReplicaWrapper
from ._log_dirs import new_session_dir
from ._logging import (
    apply_driver_logging,
    close_proxy_logging,
    configure_driver_logging,
    configure_proxy_logging,
)
from ._management import ModelManager
from ._proxy import Proxy, ProxyApp
from ._router import RouterRegistry, install_registry
from ._status import ServeStatus, collect
from ._transport import new_secret

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
    ) -> None:
        configure_driver_logging()
        self.http_options = http_options
        self.cluster = cluster or ClusterOptions()
        if log_dir is None:
            log_options = log_options or LogOptions.from_env(os.environ)
            log_dir = new_session_dir(log_options.keep_runs)
        self.log_dir = log_dir
        self._secret = new_secret()
        self.backend = backend or make_backend(self.cluster)
        self.proxies: list[ProxyInfo] = []
        self._follow_task: asyncio.Task | None = None
        self._thread = LoopThread("modelplex-driver")
        # Metrics: one folder per instance, one subfolder per node (see _metrics).
        options = metrics_options or MetricsOptions.from_env(os.environ)
        self.metrics: _metrics.Metrics | None = None
        self.metrics_options: MetricsOptions | None = None
        self.metrics_dir = ""
        if options.enabled:
            self.metrics_options = dataclasses.replace(options, directory=_metrics.new_instance_dir())
            self.metrics_dir = _metrics.node_dir(self.metrics_options.directory, self.backend.node_id)
            _metrics.install(self.metrics_dir)
            self.metrics = _metrics.Metrics(self.metrics_options)
        self.controller = Controller(
            self.backend, secret=self._secret, log_dir=self.log_dir,
            events=self.metrics.controller_events() if self.metrics else None,
            metrics=self.metrics_options,
        )
        self.registry = RouterRegistry(
            self._thread.loop, self.controller, self._secret,
            events=self.metrics.router_events if self.metrics else None,
        )
        self.models = ModelManager(
            self.controller, self.registry, local_node=self.backend.name != "ray"
        )
        self.proxy: Proxy | None = None
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
        logger.info(
            "Started modelplex (%s)%s; replica logs at %s", self.backend.name, port, self.log_dir
        )

    async def _start(self) -> None:
        await self.controller.start(host=self.backend.listen_host)
        if self.http_options is not None:
            app = ProxyApp(self.controller.routes, self.registry, self.http_options, self.models)
            app.access_log_for = self.controller.access_log
            configure_proxy_logging(self.log_dir)
            self._proxy_app = app
            self.observer = StatusFeed(self.status)
            app.observer = self.observer
            served: object = app
            if self.metrics is not None:
                app.metrics = functools.partial(_metrics.exposition, self.metrics_dir)
                served = _metrics.MetricsMiddleware(app, self.metrics)
            self.proxy = Proxy(served, self.http_options)  # type: ignore[arg-type]
            await self.proxy.start()
            assert self.proxy.port is not None
            self.proxies = [ProxyInfo(self.backend.node_id, self.http_options.host, self.proxy.port)]
            spec = ProxySpec(
                self.controller.address, self._secret, self.http_options, self.metrics_options
            )
            self.proxies += await self.backend.start_proxies(spec)
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
                app.access_log = config.enable_access_log
            apply_driver_logging(config)

        self.deployer = ConfigDeployer(
            self.controller, self.models, self.http_options, on_shutdown, set_logging
        )
        if app is not None and over_http:
            app.deployer = self.deployer

    def apply_config(self, config: Any) -> dict[str, Any]:
        if self.deployer is None:
            raise RuntimeError("config deploys are not enabled in this process")
        return self._thread.run(self.deployer.apply(config))

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        """Run a coroutine on the driver loop from the user's thread."""
        return self._thread.run(coro, timeout)

    async def status(self) -> ServeStatus:
        return await collect(self.controller, self.registry)

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
            _metrics.uninstall()
            _metrics.remove_dir(self.metrics_options.directory)
            self.metrics_options = None

    async def _shutdown(self) -> None:
        if self._follow_task is not None:
            self._follow_task.cancel()
            await asyncio.gather(self._follow_task, return_exceptions=True)
        if self.observer is not None:
            self.observer.close()  # ends the live pages' streams, so the proxy stops at once
        if self.proxy is not None:
            await self.proxy.stop()
            close_proxy_logging()
        await self.registry.close()
        await self.controller.shutdown()


def build_app(app: Application, app_name: str) -> tuple[list[DeploymentSpec], str]:
    """Flatten a bound graph: every nested Application becomes a handle to its deployment."""
    if isinstance(app, Deployment):
        app = app.bind()
    if not isinstance(app, Application):
        raise TypeError(
            f"serve.run takes an application built with Deployment.bind(), got {app!r}"
        )
    names: dict[int, str] = {}
    taken: set[str] = set()
    specs: list[DeploymentSpec] = []
    classes: list[type] = []

    def visit(node: Application) -> str:
        if id(node) in names:
            return names[id(node)]
        base = node.deployment.name
        name, n = base, 0
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        taken.add(name)
        names[id(node)] = name
        args = _replace(node.args)
        kwargs = _replace(node.kwargs)
        config = node.deployment.config.replace(name=name)
        payload = cloudpickle.dumps((node.deployment.func_or_class, args, kwargs))
        specs.append(DeploymentSpec(config, payload))
        classes.append(node.deployment.func_or_class)
        return name

    def _replace(value: Any) -> Any:
        if isinstance(value, Application):
            return DeploymentHandle(visit(value), app_name)
        if isinstance(value, list):
            return [_replace(v) for v in value]
        if isinstance(value, tuple):
            return tuple(_replace(v) for v in value)
        if isinstance(value, dict):
            return {k: _replace(v) for k, v in value.items()}
        return value

    ingress = visit(app)
    if sum(issubclass(cls, ASGIAppReplicaWrapper) for cls in classes) > 1:  # as Ray refuses it
        raise ModelplexError(
            f'Found multiple FastAPI deployments in application "{app_name}". '
            "Please only include one deployment with @serve.ingress "
            "in your application to avoid this issue."
        )
    return specs, ingress


_lock = threading.RLock()
_runtime: Runtime | None = None


def get_runtime(
    http_options: Any = None, cluster: ClusterOptions | None = None, **kwargs: Any
) -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(HTTPOptions.from_value(http_options), cluster, **kwargs)
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
