"""Typed, validated configuration, read once.

Every option a user can set lands in one of these frozen dataclasses, checked when it is built:
a bad value raises ``TypeError``/``ValueError`` naming the option and the value, so mistakes
surface at decoration or ``serve.start`` time rather than deep inside a replica.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

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


# Ray Serve's keys, with the same meaning; scheduling_strategy overrides our default, SPREAD.
RAY_ACTOR_OPTIONS = frozenset({
    "accelerator_type", "label_selector", "memory", "num_cpus", "num_gpus",
    "object_store_memory", "resources", "runtime_env", "scheduling_strategy",
})


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
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
        ):
            raise ValueError(f"ray_actor_options[{key!r}] must be a number >= 0, got {value!r}")
    resources = options.get("resources")
    if resources is not None and not isinstance(resources, Mapping):
        raise TypeError(f"ray_actor_options['resources'] must be a dict, got {resources!r}")


@dataclass(frozen=True)
class DeploymentConfig:
    """How one deployment runs; ``Deployment.options`` builds a new one with ``replace``."""

    name: str
    num_replicas: int = 1
    max_ongoing_requests: int = 5
    max_queued_requests: int = -1
    graceful_shutdown_timeout_s: float = 20.0
    health_check_period_s: float = 5.0
    health_check_timeout_s: float = 30.0
    max_replicas_per_model: int | None = None
    ray_actor_options: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if "#" in self.name or "/" in self.name:
            raise ValueError(f"name must not contain '#' or '/', got {self.name!r}")
        _int("num_replicas", self.num_replicas, minimum=1)
        _int("max_ongoing_requests", self.max_ongoing_requests, minimum=1)
        _int("max_queued_requests", self.max_queued_requests, minimum=0, allow_minus_one=True)
        _positive_float("graceful_shutdown_timeout_s", self.graceful_shutdown_timeout_s)
        _positive_float("health_check_period_s", self.health_check_period_s)
        _positive_float("health_check_timeout_s", self.health_check_timeout_s)
        if self.max_replicas_per_model is not None:
            _int("max_replicas_per_model", self.max_replicas_per_model, minimum=1)
        if self.ray_actor_options is not None:
            _check_ray_actor_options(self.ray_actor_options)

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
