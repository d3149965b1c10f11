"""``serve.run``'s first step: a bound graph flattened into one spec per deployment.

Every nested ``Application`` becomes a ``DeploymentHandle`` to its deployment, and each class
travels cloudpickled with its constructor arguments.
"""

from __future__ import annotations

from typing import Any

import cloudpickle

from .._errors import ModelplexError
from .._specs import DeploymentSpec
from .deployment import Application, Deployment
from .handle import DeploymentHandle

__all__ = ["build_app"]


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
        specs.append(DeploymentSpec(config, payload, node.deployment.interface))
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
    if sum(spec.interface.ingress for spec in specs) > 1:  # as Ray refuses it
        raise ModelplexError(
            f'Found multiple FastAPI deployments in application "{app_name}". '
            "Please only include one deployment with @serve.ingress "
            "in your application to avoid this issue."
        )
    return specs, ingress
