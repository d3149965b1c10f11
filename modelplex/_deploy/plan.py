"""What a config does, decided before anything changes: the pure plan, and each application
built from its code with the config's overrides.

Everything that can fail on the config's account (validation, imports, builders, override
names) fails here, so the deployer applies a config whole or not at all.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Iterable, Mapping

from .._config import LoggingConfig
from .._errors import ConfigError
from .._specs import DeploymentSpec
from .._user.build import build_app
from .._user.deployment import Application, Deployment
from .schema import ApplicationSchema, DeploySchema, split_import_path

__all__ = ["BuiltApp", "Plan", "build", "plan", "with_overrides"]


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
    limits = {
        spec.config.name: spec.interface.max_models
        for spec in specs if spec.interface.max_models is not None
    }
    return BuiltApp(tuple(specs), ingress, limits)


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
                specs[name] = dataclasses.replace(spec, config=config)
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
        specs[override.name] = dataclasses.replace(spec, config=config)
    if errors:
        raise ConfigError(errors)
    return [specs[spec.config.name] for spec in built.specs]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
