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
import importlib
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import cloudpickle

from ._config import HTTPOptions, LoggingConfig
from ._controller import DeploymentSpec
from ._deployment import Application, Deployment
from ._errors import ConfigError
from ._messages import DeploymentID
from ._schema import ApplicationSchema, DeploySchema, parse_config, split_import_path

logger = logging.getLogger("modelplex.deploy")


@dataclass(frozen=True)
class Plan:
    """What a config does to the applications running now, by name."""

    delete: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()  # the same entry: untouched
    update: tuple[str, ...] = ()  # the same code: new overrides, in place where possible
    build: tuple[str, ...] = ()  # new, or new code: imported and built again, rolled out


def plan(deployed: Mapping[str, ApplicationSchema], live: Iterable[str], config: DeploySchema) -> Plan:
    """Pure: compare the entries deployed from a config with a new config.

    ``live`` are the applications running, whatever deployed them: one that ``serve.run``
    started has no entry, so a config that names it builds it again."""
    live = list(live)
    wanted = [a.name for a in config.applications]
    keep, update, build = [], [], []
    for entry in config.applications:
        old = deployed.get(entry.name) if entry.name in live else None
        if old is None or old.code_key() != entry.code_key():
            build.append(entry.name)
        elif old == entry:
            keep.append(entry.name)
        else:
            update.append(entry.name)
    delete = tuple(name for name in live if name not in wanted)
    return Plan(delete, tuple(keep), tuple(update), tuple(build))


@dataclass(frozen=True)
class BuiltApp:
    """An application as its code defines it, before a config's overrides."""

    specs: tuple[DeploymentSpec, ...]
    ingress: str
    model_limits: Mapping[str, int]  # deployment -> its loader's max_num_models_per_replica


def build(entry: ApplicationSchema, where: str, *, reload: bool) -> BuiltApp:
    """Import ``entry.import_path`` (again, with ``reload``) and flatten its application.

    As in Ray, the path names an ``Application`` (or a ``Deployment``), or a builder function
    that takes the ``args`` dict and returns one."""
    from ._runtime import build_app

    module_name, attr = split_import_path(entry.import_path)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = sys.modules.get(module_name)
        if module is not None and reload:
            module = importlib.reload(module)
        elif module is None:
            module = importlib.import_module(module_name)
        target = getattr(module, attr)
    except AttributeError:
        raise ConfigError([f"{where}.import_path: module {module_name!r} has no {attr!r}"]) from None
    except Exception as exc:  # the user's module raised while importing
        raise ConfigError([f"{where}.import_path: cannot import {module_name!r}: {_one_line(exc)}"]) from None
    if isinstance(target, Deployment):
        target = target.bind()
    if isinstance(target, Application):
        if entry.args:
            raise ConfigError([
                f"{where}.args: {entry.import_path} is an application, not a builder "
                "function, so it takes no args"
            ])
        app = target
    elif callable(target):
        try:
            app = target(dict(entry.args))
        except Exception as exc:
            raise ConfigError([f"{where}.args: the builder {entry.import_path} raised {_one_line(exc)}"]) from None
        if isinstance(app, Deployment):
            app = app.bind()
        if not isinstance(app, Application):
            raise ConfigError([
                f"{where}.import_path: the builder {entry.import_path} must return an "
                f"application (Deployment.bind()), got {type(app).__name__}"
            ])
    else:
        raise ConfigError([
            f"{where}.import_path: {entry.import_path} must be an application or a builder "
            f"function, got {type(target).__name__}"
        ])
    try:
        specs, ingress = build_app(app, entry.name)
    except Exception as exc:
        raise ConfigError([f"{where}.import_path: cannot build {entry.import_path}: {_one_line(exc)}"]) from None
    limits = {}
    for spec in specs:
        limit = _loader_limit(cloudpickle.loads(spec.payload)[0])
        if limit is not None:
            limits[spec.config.name] = limit
    return BuiltApp(tuple(specs), ingress, limits)


def _loader_limit(cls: Any) -> int | None:
    """The ``max_num_models_per_replica`` of the class's ``@serve.multiplexed`` loader."""
    for name in dir(cls):
        limit = getattr(getattr(cls, name, None), "_modelplex_max_models", None)
        if limit is not None:
            return limit
    return None


def with_overrides(
    built: BuiltApp, entry: ApplicationSchema, where: str,
    default_logging: LoggingConfig | None = None,
) -> list[DeploymentSpec]:
    """The built specs with the entry's ``deployments`` overrides, by name, through
    ``Deployment.options`` (so a count ends autoscaling exactly as in code). A deployment
    whose code and entry set no ``logging_config`` takes ``default_logging`` (the top level's);
    the keys an entry sets override the top level's."""
    specs = {spec.config.name: spec for spec in built.specs}
    if default_logging is not None:
        for name, spec in specs.items():
            if spec.config.logging_config is None:
                config = spec.config.replace(logging_config=default_logging)
                specs[name] = DeploymentSpec(config, spec.payload)
    errors = []
    for i, override in enumerate(entry.deployments):
        spec = specs.get(override.name)
        if spec is None:
            errors.append(
                f"{where}.deployments[{i}].name: application {entry.name!r} has no deployment "
                f"{override.name!r} (it has {', '.join(sorted(specs))})"
            )
            continue
        if override.max_num_models_per_replica is not None and override.name not in built.model_limits:
            errors.append(
                f"{where}.deployments[{i}].max_num_models_per_replica: deployment "
                f"{override.name!r} has no @serve.multiplexed loader"
            )
        options = override.options()
        if default_logging is not None and "logging_config" in options:
            # The keys a deployment sets override the top level's, one by one.
            options["logging_config"] = {
                **dataclasses.asdict(default_logging), **options["logging_config"]
            }
        try:
            config = Deployment(object, spec.config).options(**options).config
        except (TypeError, ValueError) as exc:
            errors.append(f"{where}.deployments[{i}]: {exc}")
            continue
        specs[override.name] = DeploymentSpec(config, spec.payload)
    if errors:
        raise ConfigError(errors)
    return [specs[spec.config.name] for spec in built.specs]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@dataclass(frozen=True)
class _Deployed:
    entry: ApplicationSchema
    built: BuiltApp


class ConfigDeployer:
    """Applies configs to this process's controller; what ``PUT /-/applications`` runs.

    ``on_shutdown`` is what ``POST /-/shutdown`` calls: the CLI's instance stops."""

    def __init__(
        self,
        controller: Any,
        models: Any,
        http_options: HTTPOptions,
        on_shutdown: Callable[[], None],
        set_logging: Callable[[LoggingConfig], None] = lambda config: None,
    ) -> None:
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
                "warnings": self._http_warnings(config),
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
