"""Typed, validated configuration, read once.

Every option a user can set lands in one of these frozen dataclasses, checked when it is built:
a bad value raises ``TypeError``/``ValueError`` naming the option and the value, so mistakes
surface at decoration or ``serve.start`` time rather than deep inside a replica.

Longer than most modules on purpose: it is the one place every option and its rule are
written down (``DeploymentConfig``, ``AutoscalingConfig``, ``TenantPolicy``, the instance's
options and the cache limits), so a config file, a decorator and the management API all check
one rule.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

from ._model_ids import validate_model_id

DEFAULT_HTTP_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8000


def _int(name: str, value: Any, *, minimum: int, allow_minus_one: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if allow_minus_one and value == -1:
        return value
    if value < minimum:
        extra = " or -1 (unbounded)" if allow_minus_one else ""
        raise ValueError(f"{name} must be >= {minimum}{extra}, got {value!r}")
    return value


def _positive_float(name: str, value: Any, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


# ---- model cache limits ---------------------------------------------------------------------------


def check_max_models(value: Any, name: str = "max_models") -> int:
    """Validate a model-count limit; ``name`` is how the caller's user spells it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value == 0 or value < -1:
        raise ValueError(f"{name} must be >= 1 or -1 (unbounded), got {value!r}")
    return value


def check_max_bytes(value: Any, name: str = "max_bytes") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return value


def check_load_timeout(value: Any, name: str = "model_load_timeout_s") -> float | None:
    """A model load's time limit: None (no limit) or a finite number of seconds > 0. One rule
    for ``@serve.multiplexed`` and the cache it builds; a string is a bad value, as Ray says."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")  # NaN too
    return float(value)


def check_cache_limits(max_models: Any, max_bytes: Any) -> None:
    """Raise ``TypeError``/``ValueError`` naming a bad cache limit, in the names of
    ``@serve.multiplexed`` (None leaves a limit as it is)."""
    if max_models is not None:
        check_max_models(max_models, "max_num_models_per_replica")
    if max_bytes is not None:
        check_max_bytes(max_bytes, "max_memory_bytes")


# Ray Serve's keys, with the same meaning; scheduling_strategy overrides our default, SPREAD.
RAY_ACTOR_OPTIONS = frozenset({
    "accelerator_type", "label_selector", "memory", "num_cpus", "num_gpus",
    "object_store_memory", "resources", "runtime_env", "scheduling_strategy",
})


# Ray keeps resource amounts in fixed point: 1/10000 is the finest fraction it takes.
RESOURCE_UNIT = 10_000


def check_quantity(name: str, value: Any) -> float:
    """A resource amount as Ray takes it: a number >= 0, no finer than 1/10000."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if value == math.inf:
        raise ValueError(f"{name} must be finite, got {value!r}")
    if 0 < value < 1 / RESOURCE_UNIT:
        raise ValueError(f"{name} must be 0 or at least 0.0001 (Ray's precision), got {value!r}")
    return float(value)


def check_resource_names(name: str, resources: Any) -> Mapping[str, Any]:
    """Custom resources: a dict of names to amounts; CPU and GPU have their own keywords."""
    if not isinstance(resources, Mapping):
        raise TypeError(f"{name} must be a dict, got {resources!r}")
    for key, amount in resources.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{name} must have non-empty string keys, got {key!r}")
        if key in ("CPU", "GPU"):
            raise ValueError(
                f"{name} must not name {key!r}: use num_cpus and num_gpus for those, as in Ray"
            )
        check_quantity(f"{name}[{key!r}]", amount)
    return resources


def _check_ray_actor_options(options: Any) -> None:
    if not isinstance(options, Mapping):
        raise TypeError(f"ray_actor_options must be a dict, got {options!r}")
    unknown = sorted(set(options) - RAY_ACTOR_OPTIONS)
    if unknown:
        raise ValueError(
            f"ray_actor_options has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(RAY_ACTOR_OPTIONS))}"
        )
    for key in ("num_cpus", "num_gpus", "memory", "object_store_memory"):
        value = options.get(key)
        if value is not None:
            check_quantity(f"ray_actor_options[{key!r}]", value)
    gpus = options.get("num_gpus")
    if gpus is not None and gpus > 1 and gpus != int(gpus):
        # Ray's rule: a fraction shares one device; more than one device is whole devices.
        raise ValueError(
            f"ray_actor_options['num_gpus'] must be a whole number when more than 1, got {gpus!r}"
        )
    resources = options.get("resources")
    if resources is not None:
        check_resource_names("ray_actor_options['resources']", resources)
    runtime_env = options.get("runtime_env")
    if runtime_env is not None:
        if not isinstance(runtime_env, Mapping):
            raise TypeError(f"ray_actor_options['runtime_env'] must be a dict, got {runtime_env!r}")
        env_vars = runtime_env.get("env_vars")
        if env_vars is not None and (
            not isinstance(env_vars, Mapping)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items())
        ):
            raise TypeError(
                "ray_actor_options['runtime_env']['env_vars'] must be a dict of strings to "
                f"strings, as in Ray, got {env_vars!r}"
            )


def _number(name: str, value: Any, *, minimum: float, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise TypeError(f"{name} must be a number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class AutoscalingConfig:
    """Ray Serve 2.60's ``autoscaling_config``: the same keys, defaults and meanings.

    The replica count follows ongoing plus queued requests per replica toward
    ``target_ongoing_requests``, averaged over ``look_back_period_s``; a change must hold for
    ``upscale_delay_s`` / ``downscale_delay_s`` before it is made. modelplex also looks at the
    cache (see ``_control/autoscale/policy.py``)."""

    min_replicas: int = 1
    max_replicas: int = 1
    initial_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    downscale_to_zero_delay_s: float | None = None
    upscaling_factor: float | None = None
    downscaling_factor: float | None = None
    metrics_interval_s: float = 10.0
    look_back_period_s: float = 30.0

    def __post_init__(self) -> None:
        _int("min_replicas", self.min_replicas, minimum=0)
        _int("max_replicas", self.max_replicas, minimum=1)
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas must be >= min_replicas ({self.min_replicas}), got {self.max_replicas}"
            )
        if self.initial_replicas is not None:
            _int("initial_replicas", self.initial_replicas, minimum=0)
            if not self.min_replicas <= self.initial_replicas <= self.max_replicas:
                raise ValueError(
                    f"initial_replicas must be between min_replicas ({self.min_replicas}) and "
                    f"max_replicas ({self.max_replicas}), got {self.initial_replicas}"
                )
        _number("target_ongoing_requests", self.target_ongoing_requests, minimum=0, strict=True)
        _number("upscale_delay_s", self.upscale_delay_s, minimum=0, strict=False)
        _number("downscale_delay_s", self.downscale_delay_s, minimum=0, strict=False)
        if self.downscale_to_zero_delay_s is not None:
            _number("downscale_to_zero_delay_s", self.downscale_to_zero_delay_s, minimum=0, strict=False)
        for name in ("upscaling_factor", "downscaling_factor"):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name), minimum=0, strict=True)
        _number("metrics_interval_s", self.metrics_interval_s, minimum=0, strict=True)
        _number("look_back_period_s", self.look_back_period_s, minimum=0, strict=True)

    @property
    def start_replicas(self) -> int:
        return self.min_replicas if self.initial_replicas is None else self.initial_replicas

    @classmethod
    def from_value(cls, value: "AutoscalingConfig | Mapping[str, Any]") -> "AutoscalingConfig":
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ValueError(
                    f"autoscaling_config has unknown key(s) {', '.join(map(repr, sorted(unknown)))}"
                )
            return cls(**value)
        raise TypeError(f"autoscaling_config must be a dict or AutoscalingConfig, got {value!r}")

    @classmethod
    def auto(cls, overrides: "AutoscalingConfig | Mapping[str, Any] | None") -> "AutoscalingConfig":
        """What ``num_replicas="auto"`` means, as in Ray: target 2, 1 to 100 replicas."""
        base = {"target_ongoing_requests": 2.0, "min_replicas": 1, "max_replicas": 100}
        if isinstance(overrides, cls):
            overrides = dataclasses.asdict(overrides)
        return cls.from_value({**base, **dict(overrides or {})})


FAIRNESS = ("fair", "fifo")


def check_model_weights(value: Any, name: str = "model_weights") -> dict[str, float]:
    """``{model id: weight}``, each weight a finite number > 0; a copy, so the caller's dict
    may change afterwards. Ids not named weigh 1."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict of model id -> weight, got {value!r}")
    out: dict[str, float] = {}
    for model_id, weight in value.items():
        if not isinstance(model_id, str) or not model_id:
            raise ValueError(f"{name} has a key that is not a model id: {model_id!r}")
        try:
            validate_model_id(model_id)
        except ValueError as exc:
            raise ValueError(f"{name} has a bad model id {model_id!r}: {exc}") from None
        if (
            isinstance(weight, bool) or not isinstance(weight, (int, float))
            or not 0 < weight < math.inf
        ):
            raise ValueError(
                f"{name} must give each id a finite number > 0, got {weight!r} for {model_id!r}"
            )
        out[model_id] = float(weight)
    return out


@dataclass(frozen=True)
class TenantPolicy:
    """How one deployment shares its replicas among model ids; every router of the deployment
    applies it (it travels in the replica set, see ``_data/fairness.py``).

    ``fairness="fair"``: when every slot is busy, the next goes to the waiting model id that
    has had the least service, weighted by ``weights`` (1 for an id not named); ``"fifo"``:
    arrival order, grouped by model id. ``max_ongoing_per_model`` caps one id's requests
    running at once, ``max_queued_per_model`` its requests waiting (-1: no cap)."""

    fairness: str = "fair"
    weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    max_ongoing_per_model: int = -1
    max_queued_per_model: int = -1

    def __post_init__(self) -> None:
        if self.fairness not in FAIRNESS:
            raise ValueError(f"fairness must be 'fair' or 'fifo', got {self.fairness!r}")
        object.__setattr__(self, "weights", check_model_weights(self.weights))
        _int("max_ongoing_requests_per_model", self.max_ongoing_per_model, minimum=1, allow_minus_one=True)
        _int("max_queued_requests_per_model", self.max_queued_per_model, minimum=0, allow_minus_one=True)

    @property
    def fair(self) -> bool:
        return self.fairness == "fair"

    def weight(self, model_id: str) -> float:
        return self.weights.get(model_id, 1.0)


@dataclass(frozen=True)
class DeploymentConfig:
    """How one deployment runs; ``Deployment.options`` builds a new one with ``replace``."""

    name: str
    num_replicas: int = 1
    max_ongoing_requests: int = 5
    max_queued_requests: int = -1
    # Ray's names and defaults: a stopping replica checks every wait_loop_s whether requests
    # still run, and stops anyway after timeout_s.
    graceful_shutdown_wait_loop_s: float = 2.0
    graceful_shutdown_timeout_s: float = 20.0
    health_check_period_s: float = 5.0
    health_check_timeout_s: float = 30.0
    max_replicas_per_model: int | None = None
    ray_actor_options: Mapping[str, Any] | None = None
    # With it, num_replicas is only where the count starts ("auto": Ray's defaults).
    autoscaling_config: AutoscalingConfig | None = None
    # None: the instance's default (the config file's top-level logging_config, or Ray's).
    logging_config: "LoggingConfig | None" = None
    # Handed to the user's reconfigure() on each replica; JSON-serializable, as in Ray.
    user_config: Any = None
    # How model ids share the replicas (``TenantPolicy``); all four change in place.
    fairness: str = "fair"
    model_weights: Mapping[str, float] | None = None
    max_ongoing_requests_per_model: int = -1
    max_queued_requests_per_model: int = -1

    def __post_init__(self) -> None:
        if self.logging_config is not None:
            object.__setattr__(self, "logging_config", LoggingConfig.from_value(self.logging_config))
        if self.num_replicas == "auto":
            object.__setattr__(self, "autoscaling_config", AutoscalingConfig.auto(self.autoscaling_config))
        elif self.autoscaling_config is not None:
            object.__setattr__(
                self, "autoscaling_config", AutoscalingConfig.from_value(self.autoscaling_config)
            )
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if "#" in self.name or "/" in self.name:
            raise ValueError(f"name must not contain '#' or '/', got {self.name!r}")
        if self.num_replicas != "auto":
            _int("num_replicas", self.num_replicas, minimum=1)
        _int("max_ongoing_requests", self.max_ongoing_requests, minimum=1)
        _int("max_queued_requests", self.max_queued_requests, minimum=0, allow_minus_one=True)
        _positive_float("graceful_shutdown_wait_loop_s", self.graceful_shutdown_wait_loop_s)
        _positive_float("graceful_shutdown_timeout_s", self.graceful_shutdown_timeout_s)
        _positive_float("health_check_period_s", self.health_check_period_s)
        _positive_float("health_check_timeout_s", self.health_check_timeout_s)
        if self.max_replicas_per_model is not None:
            _int("max_replicas_per_model", self.max_replicas_per_model, minimum=1)
        if self.ray_actor_options is not None:
            _check_ray_actor_options(self.ray_actor_options)
        if self.user_config is not None:
            try:
                json.dumps(self.user_config)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"user_config is not JSON-serializable: {exc}") from None
            # A copy: the caller's dict may change after deploy; the replicas' must not.
            object.__setattr__(self, "user_config", copy.deepcopy(self.user_config))
        if self.model_weights is not None:
            object.__setattr__(self, "model_weights", check_model_weights(self.model_weights))
        _ = self.tenants  # checks fairness and the per-model limits

    @property
    def tenants(self) -> TenantPolicy:
        """What the routers apply: fairness, weights and the per-model limits."""
        return TenantPolicy(
            self.fairness, self.model_weights or {}, self.max_ongoing_requests_per_model,
            self.max_queued_requests_per_model,
        )

    @property
    def initial_replicas(self) -> int:
        """How many replicas a first deploy starts."""
        if self.autoscaling_config is not None:
            return self.autoscaling_config.start_replicas
        return self.num_replicas

    def replace(self, **changes: Any) -> "DeploymentConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown deployment option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class HTTPOptions:
    """Where the proxy listens and what it accepts."""

    def __repr__(self) -> str:  # never print the token
        token = "set" if self.management_token else None
        return f"HTTPOptions(host={self.host!r}, port={self.port!r}, management_token={token})"

    host: str = DEFAULT_HTTP_HOST
    port: int = DEFAULT_HTTP_PORT
    request_timeout_s: float | None = None
    max_body_bytes: int = 100 * 1024 * 1024
    max_header_count: int = 100
    max_header_bytes: int = 16 * 1024
    # The /-/models routes change what replicas hold: switch them off, or require
    # "Authorization: Bearer <token>" for them.
    management_routes: bool = True
    management_token: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"host must be a non-empty string, got {self.host!r}")
        _int("port", self.port, minimum=0)
        if self.port > 65535:
            raise ValueError(f"port must be <= 65535, got {self.port!r}")
        _positive_float("request_timeout_s", self.request_timeout_s, optional=True)
        _int("max_body_bytes", self.max_body_bytes, minimum=1)
        _int("max_header_count", self.max_header_count, minimum=1)
        _int("max_header_bytes", self.max_header_bytes, minimum=1)
        if not isinstance(self.management_routes, bool):
            raise TypeError(f"management_routes must be a bool, got {self.management_routes!r}")
        if self.management_token is not None and (
            not isinstance(self.management_token, str) or not self.management_token
        ):
            raise ValueError("management_token must be a non-empty string or None")

    @classmethod
    def from_value(cls, value: "HTTPOptions | Mapping[str, Any] | None") -> "HTTPOptions":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise TypeError(f"unknown http option(s): {', '.join(sorted(unknown))}")
            return cls(**value)
        raise TypeError(f"http_options must be a dict or HTTPOptions, got {value!r}")


DEFAULT_GRPC_PORT = 9000


@dataclass(frozen=True)
class gRPCOptions:  # noqa: N801  (Ray Serve's name)
    """Ray Serve 2.60's ``grpc_options``: the same fields and defaults.

    gRPC is served only when ``grpc_servicer_functions`` names at least one
    ``add_<Service>Servicer_to_server`` function (import paths, resolved when the proxy
    starts), on the host HTTP uses (``http_options.host``). Port 0 picks a free port (Ray
    switches gRPC off there); ``serve.list_proxies()`` says which."""

    port: int = DEFAULT_GRPC_PORT
    grpc_servicer_functions: tuple[str, ...] = ()
    request_timeout_s: float | None = None
    enable_reflection: bool = True

    def __post_init__(self) -> None:
        _int("port", self.port, minimum=0)
        if self.port > 65535:
            raise ValueError(f"port must be <= 65535, got {self.port!r}")
        functions = self.grpc_servicer_functions
        if isinstance(functions, str) or not isinstance(functions, (list, tuple)):
            raise TypeError(f"grpc_servicer_functions must be a list of import paths, got {functions!r}")
        for path in functions:
            if not isinstance(path, str) or "." not in path.strip(".") or " " in path:
                raise ValueError(
                    f"grpc_servicer_functions must hold import paths such as "
                    f"'my_pb2_grpc.add_MyServiceServicer_to_server', got {path!r}"
                )
        object.__setattr__(self, "grpc_servicer_functions", tuple(functions))
        _positive_float("request_timeout_s", self.request_timeout_s, optional=True)
        if not isinstance(self.enable_reflection, bool):
            raise TypeError(f"enable_reflection must be a bool, got {self.enable_reflection!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.grpc_servicer_functions)

    @classmethod
    def from_value(cls, value: "gRPCOptions | Mapping[str, Any] | None") -> "gRPCOptions":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise TypeError(f"unknown grpc option(s): {', '.join(sorted(unknown))}")
            return cls(**value)
        raise TypeError(f"grpc_options must be a dict or gRPCOptions, got {value!r}")


@dataclass(frozen=True)
class NodeResources:
    """The node's inventory as ``serve.start`` (and ``ray.init``) take it: None detects it.

    ``num_cpus`` and ``num_gpus`` are whole numbers, as ``ray.init`` takes them; ``resources``
    names custom resources and their amounts. Given values win over what is detected, so a
    test can say "this node has 4 GPUs" on a machine without one."""

    num_cpus: int | None = None
    num_gpus: int | None = None
    resources: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if value is not None:
                _int(name, value, minimum=0)
        if self.resources is not None:
            check_resource_names("resources", self.resources)
            object.__setattr__(
                self, "resources", {k: float(v) for k, v in sorted(self.resources.items())}
            )

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.num_cpus, self.num_gpus, self.resources))

    def options(self) -> dict[str, Any]:
        """The values given, as ``serve.start`` and ``ray.init`` take them."""
        return {
            k: (dict(v) if isinstance(v, Mapping) else v)
            for k, v in dataclasses.asdict(self).items() if v is not None
        }


CLUSTERS = ("local", "ray")
PROXY_LOCATIONS = ("head_node", "every_node")


@dataclass(frozen=True)
class ClusterOptions:
    """Where replicas run: processes on this machine ("local"), or actors on a Ray cluster.

    ``address`` goes to ``ray.init`` as is (``"auto"``, ``"local"``, ``"ray://host:10001"``);
    None does what a bare ``ray.init()`` does. ``proxy_location="every_node"`` adds one HTTP
    proxy on each other node of the cluster.
    """

    cluster: str = "local"
    address: str | None = None
    proxy_location: str = "head_node"

    def __post_init__(self) -> None:
        if self.cluster not in CLUSTERS:
            raise ValueError(f"cluster must be one of {', '.join(map(repr, CLUSTERS))}, got {self.cluster!r}")
        if self.address is not None:
            if not isinstance(self.address, str) or not self.address:
                raise ValueError(f"address must be a non-empty string, got {self.address!r}")
            if self.cluster != "ray":
                raise ValueError(f"address={self.address!r} needs cluster='ray'")
        if self.proxy_location not in PROXY_LOCATIONS:
            raise ValueError(
                f"proxy_location must be one of {', '.join(map(repr, PROXY_LOCATIONS))}, "
                f"got {self.proxy_location!r}"
            )


LOG_RUNS_ENV = "MODELPLEX_LOG_RUNS"


@dataclass(frozen=True)
class LogOptions:
    """How many runs keep their replica log folders, this run included (``MODELPLEX_LOG_RUNS``)."""

    keep_runs: int = 10

    def __post_init__(self) -> None:
        _int("keep_runs", self.keep_runs, minimum=1)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "LogOptions":
        raw = environ.get(LOG_RUNS_ENV, "").strip()
        if not raw:
            return cls()
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"{LOG_RUNS_ENV} must be a whole number >= 1, got {raw!r}")
        return cls(int(raw))


LOG_ENCODINGS = ("TEXT", "JSON")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# The LogRecord attributes additional_log_standard_attrs may name (Ray's list).
LOG_RECORD_ATTRS = frozenset({
    "args", "asctime", "created", "exc_info", "exc_text", "filename", "funcName", "levelname",
    "levelno", "lineno", "message", "module", "msecs", "msg", "name", "pathname", "process",
    "processName", "relativeCreated", "stack_info", "thread", "threadName", "taskName",
})


@dataclass(frozen=True)
class LoggingConfig:
    """Ray Serve 2.60's ``logging_config``, but ``logs_dir`` (logs go to the run's folder).

    ``encoding`` "TEXT" or "JSON" (one object per line); ``log_level`` for the replica's
    loggers (a name or its number); ``enable_access_log`` the per-request lines;
    ``additional_log_standard_attrs`` LogRecord attributes added to every line."""

    encoding: str = "TEXT"
    log_level: str = "INFO"
    enable_access_log: bool = True
    additional_log_standard_attrs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.encoding not in LOG_ENCODINGS:
            raise ValueError(f"encoding must be 'TEXT' or 'JSON', got {self.encoding!r}")
        level = self.log_level
        if isinstance(level, int) and not isinstance(level, bool):
            level = logging.getLevelName(level)
        if level not in LOG_LEVELS:
            raise ValueError(
                f"log_level must be one of {', '.join(LOG_LEVELS)} (or its number), "
                f"got {self.log_level!r}"
            )
        object.__setattr__(self, "log_level", level)
        if not isinstance(self.enable_access_log, bool):
            raise TypeError(f"enable_access_log must be a bool, got {self.enable_access_log!r}")
        attrs = self.additional_log_standard_attrs
        if isinstance(attrs, str) or not isinstance(attrs, (list, tuple)):
            raise TypeError(f"additional_log_standard_attrs must be a list, got {attrs!r}")
        for attr in attrs:
            if attr not in LOG_RECORD_ATTRS:
                raise ValueError(
                    f"additional_log_standard_attrs has an unknown attribute {attr!r}; "
                    f"allowed: {', '.join(sorted(LOG_RECORD_ATTRS))}"
                )
        object.__setattr__(self, "additional_log_standard_attrs", tuple(dict.fromkeys(attrs)))

    @classmethod
    def from_value(cls, value: "LoggingConfig | Mapping[str, Any] | None") -> "LoggingConfig":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            if value.get("logs_dir") is not None:
                raise ValueError(
                    "logging_config['logs_dir'] is not supported yet: logs go to the run's "
                    "folder under <tmp>/modelplex-logs"
                )
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = set(value) - known - {"logs_dir"}
            if unknown:
                raise ValueError(
                    f"logging_config has unknown key(s) {', '.join(map(repr, sorted(unknown)))}; "
                    f"allowed: {', '.join(sorted(known))}"
                )
            return cls(**{k: v for k, v in value.items() if k in known})
        raise TypeError(f"logging_config must be a dict or LoggingConfig, got {value!r}")


METRICS_ENV = "MODELPLEX_METRICS"
METRICS_TOP_MODELS_ENV = "MODELPLEX_METRICS_TOP_MODELS"


@dataclass(frozen=True)
class MetricsOptions:
    """Prometheus metrics (``MODELPLEX_METRICS=0`` switches them off) and how many model ids
    per deployment keep a label of their own (``MODELPLEX_METRICS_TOP_MODELS``, default 50;
    the rest are folded into ``__other__``). ``directory`` is the instance's metrics folder,
    set by the driver at start."""

    enabled: bool = True
    top_models: int = 50
    directory: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise TypeError(f"enabled must be a bool, got {self.enabled!r}")
        _int("top_models", self.top_models, minimum=1)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "MetricsOptions":
        raw = environ.get(METRICS_ENV, "1").strip().lower()
        if raw not in ("0", "1", "false", "true", "off", "on", ""):
            raise ValueError(f"{METRICS_ENV} must be 1 or 0, got {raw!r}")
        top = environ.get(METRICS_TOP_MODELS_ENV, "").strip()
        if top and (not top.isdigit() or int(top) < 1):
            raise ValueError(f"{METRICS_TOP_MODELS_ENV} must be a whole number >= 1, got {top!r}")
        return cls(raw not in ("0", "false", "off"), int(top) if top else 50)
