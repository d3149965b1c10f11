"""Config deploys: build the applications a config names and bring the instance to it.

Declarative, as Ray Serve's ``serve deploy``: the config is the whole truth. An application
whose entry did not change is left alone; one whose code (``import_path``, ``args``) did not
change takes its new overrides in place (the controller keeps the replicas of a deployment
whose code and replica options are the same, and rolls out the others); one whose code changed
is imported and built again and rolled out; an application the config no longer names is
deleted. Everything that can fail on the config's account (validation, imports, builders,
override names) fails before anything changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .._config import HTTPOptions, LoggingConfig, NodeResources
from .._control.controller import Controller
from .._control.management import ModelManager
from .._errors import ConfigError
from .._messages import DeploymentID
from .plan import BuiltApp, build, plan, with_overrides
from .schema import ApplicationSchema, DeploySchema, parse_config, split_import_path

logger = logging.getLogger("modelplex.deploy")


@dataclass(frozen=True)
class _Deployed:
    entry: ApplicationSchema
    built: BuiltApp


class ConfigDeployer:
    """Applies configs to this process's controller; what ``PUT /-/applications`` runs.

    ``on_shutdown`` is what ``POST /-/shutdown`` calls: the CLI's instance stops."""

    def __init__(
        self,
        controller: Controller,
        models: ModelManager,
        http_options: HTTPOptions,
        on_shutdown: Callable[[], None],
        set_logging: Callable[[LoggingConfig], None] = lambda config: None,
        node: NodeResources = NodeResources(),
    ) -> None:
        """``node``: the inventory the instance started with, as given."""
        self._node = node
        self._controller = controller
        self._models = models
        self._http_options = http_options
        self._on_shutdown = on_shutdown
        self._set_logging = set_logging
        self._logging: LoggingConfig | None = None  # the last config's top-level logging_config
        self._deployed: dict[str, _Deployed] = {}
        self._lock = asyncio.Lock()

    def shutdown(self) -> None:
        self._on_shutdown()

    async def apply(self, config: DeploySchema | Mapping[str, Any]) -> dict[str, Any]:
        """Bring the instance to ``config``; return what happened to each application."""
        if not isinstance(config, DeploySchema):
            config = parse_config(config)
        async with self._lock:
            live = self._controller.app_names()
            steps = plan({n: d.entry for n, d in self._deployed.items()}, live, config)
            default_logging = config.logging_config.config()
            if self._logging is not None and default_logging != self._logging:
                # A new default for every deployment: the applications kept are updated.
                steps = dataclasses.replace(steps, keep=(), update=steps.update + steps.keep)
            entries = {a.name: (i, a) for i, a in enumerate(config.applications)}
            # Everything that can fail on the config's account, before anything changes.
            built: dict[str, BuiltApp] = {}
            errors: list[str] = []
            reloaded: set[str] = set()
            for name in steps.build:
                i, entry = entries[name]
                module = split_import_path(entry.import_path)[0]
                try:
                    built[name] = await asyncio.to_thread(
                        build, entry, f"applications[{i}]", reload=module not in reloaded
                    )
                except ConfigError as exc:
                    errors += exc.errors
                reloaded.add(module)
            for name in steps.update:
                built[name] = self._deployed[name].built
            specs = {}
            for name, app in built.items():
                i, entry = entries[name]
                try:
                    specs[name] = with_overrides(app, entry, f"applications[{i}]", default_logging)
                except ConfigError as exc:
                    errors += exc.errors
            if errors:
                raise ConfigError(errors)

            self._apply_logging(config)
            for name in steps.delete:
                logger.info("Deleting application %r: the config no longer names it.", name)
                await self._controller.delete(name)
                self._deployed.pop(name, None)
            for entry in config.applications:
                if entry.name in steps.keep:
                    continue
                in_place = entry.name in steps.update
                app = built[entry.name]
                logger.info(
                    "Deploying application %r (%s).", entry.name,
                    "new overrides, in place where possible" if in_place else "new code",
                )
                await self._controller.deploy(
                    entry.name, entry.route_prefix, specs[entry.name], app.ingress,
                    in_place=in_place,
                )
                previous = self._deployed.get(entry.name)
                self._deployed[entry.name] = _Deployed(entry, app)
                await self._apply_model_limits(entry, app, previous)
            return {
                "deleted": list(steps.delete),
                "unchanged": list(steps.keep),
                "updated": list(steps.update),
                "deployed": list(steps.build),
                "warnings": self._http_warnings(config) + self._node_warnings(config),
            }

    async def _apply_model_limits(
        self, entry: ApplicationSchema, app: BuiltApp, previous: _Deployed | None
    ) -> None:
        """``max_num_models_per_replica`` as ``serve.configure_multiplexing`` sets it; a
        limit the config no longer sets goes back to the code's."""
        wanted = {
            d.name: d.max_num_models_per_replica
            for d in entry.deployments
            if d.max_num_models_per_replica is not None
        }
        if previous is not None:
            for d in previous.entry.deployments:
                if d.max_num_models_per_replica is not None and d.name not in wanted:
                    if d.name in app.model_limits:
                        wanted[d.name] = app.model_limits[d.name]
        for deployment, limit in wanted.items():
            await self._models.configure(entry.name, deployment, limit, None)

    def _apply_logging(self, config: DeploySchema) -> None:
        self._logging = config.logging_config.config()
        logging.getLogger("modelplex").setLevel(self._logging.log_level)
        self._set_logging(self._logging)

    def _http_warnings(self, config: DeploySchema) -> list[str]:
        """http_options only apply when an instance starts (as in Ray): say so if they differ."""
        differ = [
            f"{key}: {value!r} in the config, {getattr(self._http_options, key)!r} running"
            for key, value in config.http_options.set_fields().items()
            if getattr(self._http_options, key, value) != value
        ]
        if not differ:
            return []
        return [
            "http_options differ from the running instance's (" + "; ".join(differ) + "); "
            "they apply when an instance starts from this config (modelplex run)"
        ]

    def _node_warnings(self, config: DeploySchema) -> list[str]:
        """node_resources, too, only apply when an instance starts."""
        wanted = config.node_resources.options()
        if not wanted or NodeResources(**wanted) == self._node:
            return []
        return [
            f"node_resources {wanted} differ from the running instance's "
            f"({self._node.options() or 'detected'}); they apply when an instance starts "
            "from this config (modelplex run)"
        ]

    def status(self) -> dict[str, Any]:
        """What runs: each application's route, code and running replicas per deployment."""
        apps = {}
        for prefix, (name, ingress) in sorted(self._controller.routes().items()):
            _, deployments = self._controller.deployments(name)
            deployed = self._deployed.get(name)
            apps[name] = {
                "route_prefix": prefix,
                "ingress": ingress.name,
                "import_path": deployed.entry.import_path if deployed else None,
                "deployments": {
                    d.name: {"running_replicas": self._running(d)} for d in deployments
                },
            }
        return {"applications": apps}

    def _running(self, deployment_id: DeploymentID) -> int:
        return len(self._controller.replica_set(deployment_id).replicas)
