"""Deployments and the application graphs that ``.bind()`` builds.

``@serve.deployment`` wraps a class (or function) with a validated ``DeploymentConfig``;
``.bind(*args, **kwargs)`` records constructor arguments, which may themselves be bound
deployments: those become ``DeploymentHandle``s when the graph is flattened for ``serve.run``.
What the class declares (loaders, batch methods, an ingress app) is read here, once, into its
``DeploymentInterface``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from .._config import DeploymentConfig
from .._specs import DeploymentInterface, LoaderSpec
from .batch import is_batched
from .ingress import ASGIAppReplicaWrapper
from .multiplex import loader_of


class Deployment:
    def __init__(
        self, target: Callable, config: DeploymentConfig,
        interface: DeploymentInterface = DeploymentInterface(),
    ) -> None:
        self._target = target
        self._config = config
        self._interface = interface

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def config(self) -> DeploymentConfig:
        return self._config

    @property
    def func_or_class(self) -> Callable:
        return self._target

    @property
    def interface(self) -> DeploymentInterface:
        return self._interface

    def options(self, **changes: Any) -> "Deployment":
        changes = _drop_none(changes)
        _check_scaling(changes)
        if "autoscaling_config" in changes and "num_replicas" not in changes:
            if self._config.num_replicas != "auto":
                changes["num_replicas"] = 1
        elif isinstance(changes.get("num_replicas"), int):
            changes.setdefault("autoscaling_config", None)  # a fixed count ends autoscaling
        return Deployment(self._target, self._config.replace(**changes), self._interface)

    def bind(self, *args: Any, **kwargs: Any) -> "Application":
        return Application(self, args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"Deployment '{self.name}' cannot be constructed directly; "
            "use .bind(...) and serve.run(...)."
        )

    def __repr__(self) -> str:
        return f"Deployment(name={self.name!r})"


@dataclass(frozen=True, eq=False)
class Application:
    """A deployment bound to its constructor arguments; the unit ``serve.run`` starts."""

    deployment: Deployment
    args: tuple
    kwargs: dict


def _check_scaling(options: dict[str, Any]) -> None:
    """As in Ray: a fixed count and an autoscaling config contradict each other."""
    if options.get("autoscaling_config") is not None and options.get("num_replicas") not in (None, "auto"):
        raise ValueError(
            "Manually setting num_replicas is not allowed when autoscaling_config is provided; "
            "use num_replicas='auto' or leave it out."
        )


def _drop_none(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


def deployment(
    _target: Callable | None = None,
    *,
    name: str | None = None,
    num_replicas: int | str | None = None,
    max_ongoing_requests: int | None = None,
    max_queued_requests: int | None = None,
    user_config: Any = None,
    graceful_shutdown_wait_loop_s: float | None = None,
    graceful_shutdown_timeout_s: float | None = None,
    health_check_period_s: float | None = None,
    health_check_timeout_s: float | None = None,
    max_replicas_per_model: int | None = None,
    ray_actor_options: dict | None = None,
    autoscaling_config: dict | None = None,
    logging_config: dict | None = None,
    fairness: str | None = None,
    model_weights: dict | None = None,
    max_ongoing_requests_per_model: int | None = None,
    max_queued_requests_per_model: int | None = None,
) -> Any:
    """Turn a class or function into a deployment, bare (``@deployment``) or with options.

    modelplex's own options, how model ids share the replicas (docs/multiplexing.md#tenants):
    ``fairness`` "fair" (the default: the next free slot goes to the waiting model id that had
    the least service, by ``model_weights``, 1 for an id not named) or "fifo" (arrival order);
    ``max_ongoing_requests_per_model`` and ``max_queued_requests_per_model`` (-1: no limit)."""
    options = _drop_none(
        dict(
            num_replicas=num_replicas,
            max_ongoing_requests=max_ongoing_requests,
            max_queued_requests=max_queued_requests,
            user_config=user_config,
            graceful_shutdown_wait_loop_s=graceful_shutdown_wait_loop_s,
            graceful_shutdown_timeout_s=graceful_shutdown_timeout_s,
            health_check_period_s=health_check_period_s,
            health_check_timeout_s=health_check_timeout_s,
            max_replicas_per_model=max_replicas_per_model,
            ray_actor_options=ray_actor_options,
            autoscaling_config=autoscaling_config,
            logging_config=logging_config,
            fairness=fairness,
            model_weights=model_weights,
            max_ongoing_requests_per_model=max_ongoing_requests_per_model,
            max_queued_requests_per_model=max_queued_requests_per_model,
        )
    )
    _check_scaling(options)

    def decorate(target: Callable) -> Deployment:
        if not callable(target):
            raise TypeError(f"@deployment needs a class or function, got {target!r}")
        if inspect.isclass(target):
            cls, interface = target, interface_of(target)
        else:
            cls, interface = _function_deployment(target), DeploymentInterface()
        config = DeploymentConfig(name=name or target.__name__, **options)
        return Deployment(cls, config, interface)

    if _target is not None:
        return decorate(_target)
    return decorate


def interface_of(cls: type) -> DeploymentInterface:
    """What ``cls`` declares, in ``dir`` order (a config's loader limit is the first one's)."""
    loaders: list[LoaderSpec] = []
    batch_methods: list[str] = []
    for name in dir(cls):
        try:
            value = getattr(cls, name, None)
        except Exception:  # a descriptor that refuses the class: neither a loader nor a batch
            continue
        loader = loader_of(value)
        if loader is not None:
            loaders.append(LoaderSpec(name, loader.max_models))
        elif is_batched(value):
            batch_methods.append(name)
    return DeploymentInterface(
        tuple(loaders), tuple(batch_methods), issubclass(cls, ASGIAppReplicaWrapper)
    )


def _function_deployment(func: Callable) -> type:
    """A function deployment is a class whose ``__call__`` is the function."""
    if inspect.iscoroutinefunction(func):

        async def call(self, *args, **kwargs):
            return await func(*args, **kwargs)

    else:

        def call(self, *args, **kwargs):
            return func(*args, **kwargs)

    return type(func.__name__, (), {"__call__": call, "__module__": func.__module__})
