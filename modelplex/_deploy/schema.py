"""The config file: the subset of Ray Serve 2.60's ``ServeDeploySchema`` that modelplex runs.

Same key names as Ray's. pydantic checks the structure and types; the ranges and the rules
between keys are the ones ``_config`` already enforces (``DeploymentConfig``,
``AutoscalingConfig``, ``HTTPOptions``), called from validators, so a file and
``@serve.deployment`` reject the same values with the same words. Every problem is reported
as one line naming its place in the file:

    applications[0].deployments[1].autoscaling_config.max_replicas: must be >= min_replicas (2), got 1

Ray keys that modelplex does not implement are refused with "not supported yet", never
ignored. One file format, so one module, though longer than most: its models mirror Ray's
schema section by section, and the error formatting at the end serves all of them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Mapping

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .._config import (
    DEFAULT_HTTP_HOST,
    DEFAULT_HTTP_PORT,
    AutoscalingConfig,
    DeploymentConfig,
    HTTPOptions,
    LoggingConfig,
    gRPCOptions,
    NodeResources,
)
from .._user.deployment import _check_scaling
from .._errors import ConfigError


def _unsupported(why: str) -> Any:
    """A Ray key modelplex refuses (rather than ignores) until it implements it."""

    def refuse(value: Any) -> Any:
        raise PydanticCustomError("unsupported", f"not supported yet: {why}")

    return Annotated[Any, AfterValidator(refuse)]


def _explained(expected: str) -> Any:
    """Replace pydantic's per-member union errors by one line saying what is expected."""

    def check(value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("type", f"must be {expected}, got {value!r}") from None

    return WrapValidator(check)


class _Schema(BaseModel):
    # strict: "5" is not 5 and 2.0 is not an int; a float field still takes an int.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    def set_fields(self) -> dict[str, Any]:
        """The keys the file set, as plain values (nested schemas as dicts)."""
        return self.model_dump(exclude_unset=True)


def _ranged(build: Any, values: Mapping[str, Any]) -> None:
    """Run ``_config``'s own checks; their "x must be ..." messages become errors at key x."""
    try:
        build(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


class AutoscalingSchema(_Schema):
    # The defaults are AutoscalingConfig's own (only the keys a file sets are passed on).
    min_replicas: int = AutoscalingConfig.min_replicas
    max_replicas: int = AutoscalingConfig.max_replicas
    initial_replicas: int | None = AutoscalingConfig.initial_replicas
    target_ongoing_requests: float = AutoscalingConfig.target_ongoing_requests
    upscale_delay_s: float = AutoscalingConfig.upscale_delay_s
    downscale_delay_s: float = AutoscalingConfig.downscale_delay_s
    downscale_to_zero_delay_s: float | None = AutoscalingConfig.downscale_to_zero_delay_s
    upscaling_factor: float | None = AutoscalingConfig.upscaling_factor
    downscaling_factor: float | None = AutoscalingConfig.downscaling_factor
    metrics_interval_s: float = AutoscalingConfig.metrics_interval_s
    look_back_period_s: float = AutoscalingConfig.look_back_period_s
    policy: _unsupported("custom autoscaling policies") = None
    aggregation_function: _unsupported("modelplex averages over look_back_period_s") = None
    upscale_smoothing_factor: _unsupported("use upscaling_factor") = None
    downscale_smoothing_factor: _unsupported("use downscaling_factor") = None

    @model_validator(mode="after")
    def _check(self) -> "AutoscalingSchema":
        _ranged(AutoscalingConfig, self.set_fields())
        return self


class RayActorOptionsSchema(_Schema):
    """What each replica reserves, as in Ray: Ray places by it on a cluster, and modelplex on
    the local node (``num_cpus``, ``num_gpus``, ``resources``, ``runtime_env.env_vars``)."""

    num_cpus: float | None = Field(None, ge=0)
    num_gpus: float | None = Field(None, ge=0)
    memory: float | None = Field(None, ge=0)
    object_store_memory: float | None = Field(None, ge=0)
    resources: dict[str, Annotated[float, Field(ge=0)]] | None = None
    accelerator_type: str | None = None
    label_selector: dict[str, str] | None = None
    runtime_env: dict[str, Any] | None = None
    scheduling_strategy: Any = None
    fallback_strategy: _unsupported("fallback_strategy") = None

    @model_validator(mode="after")
    def _check(self) -> "RayActorOptionsSchema":
        from .._config import _check_ray_actor_options

        try:  # Ray's rules beyond the types: whole GPUs above 1, resource names, env_vars
            _check_ray_actor_options(self.set_fields())
        except (TypeError, ValueError) as exc:
            # "ray_actor_options['num_gpus'] must be ..." is an error at num_gpus
            raise ValueError(re.sub(r"^ray_actor_options\['(\w+)'\]", r"\1", str(exc))) from None
        return self


def _log_level(value: Any) -> str:
    """The level's name, as ``LoggingConfig`` keeps it (a number is taken too)."""
    try:
        return LoggingConfig(log_level=value).log_level
    except ValueError as exc:
        raise PydanticCustomError("value_error", str(exc).removeprefix("log_level ")) from None


class LoggingSchema(_Schema):
    """Ray's ``logging_config``: at the top level the default for every deployment (and the
    proxy's access log), per deployment its own; ``_config.LoggingConfig`` checks the values."""

    encoding: Annotated[Literal["TEXT", "JSON"], _explained("'TEXT' or 'JSON'")] = "TEXT"
    log_level: Annotated[Any, AfterValidator(_log_level)] = "INFO"
    enable_access_log: bool = True
    additional_log_standard_attrs: list[str] | None = None
    logs_dir: _unsupported("logs_dir; logs go under <tmp>/modelplex-logs") = None

    @model_validator(mode="after")
    def _check(self) -> "LoggingSchema":
        _ranged(LoggingConfig, self.options())
        return self

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}

    def config(self) -> LoggingConfig:
        return LoggingConfig(**self.options())


class DeploymentSchema(_Schema):
    """Overrides for one deployment of an application, found by name."""

    name: str
    num_replicas: Annotated[int | Literal["auto"], _explained("an int >= 1 or 'auto'")] | None = None
    max_ongoing_requests: int | None = None
    max_queued_requests: int | None = None
    autoscaling_config: AutoscalingSchema | None = None
    ray_actor_options: RayActorOptionsSchema | None = None
    logging_config: LoggingSchema | None = None
    # modelplex's own: the cache size of the deployment's @serve.multiplexed loader, applied
    # to running replicas as serve.configure_multiplexing does.
    max_num_models_per_replica: int | None = None
    # Handed to reconfigure(); a change of it alone is applied to the running replicas.
    user_config: Any = None
    graceful_shutdown_wait_loop_s: float | None = None
    graceful_shutdown_timeout_s: float | None = None
    health_check_period_s: float | None = None
    health_check_timeout_s: float | None = None
    # modelplex's own: how model ids share the replicas; a change is applied in place.
    fairness: Annotated[Literal["fair", "fifo"], _explained("'fair' or 'fifo'")] | None = None
    model_weights: dict[str, float] | None = None
    max_ongoing_requests_per_model: int | None = None
    max_queued_requests_per_model: int | None = None

    placement_group_bundles: _unsupported("placement groups") = None
    placement_group_strategy: _unsupported("placement groups") = None
    max_replicas_per_node: _unsupported("max_replicas_per_node") = None
    request_router_config: _unsupported("custom request routers") = None

    @field_validator("max_num_models_per_replica")
    @classmethod
    def _models(cls, value: int | None) -> int | None:
        if value is not None and (value == 0 or value < -1):
            raise ValueError(f"must be >= 1 or -1 (unbounded), got {value!r}")
        return value

    @model_validator(mode="after")
    def _check(self) -> "DeploymentSchema":
        options = self.options()
        try:
            _check_scaling(options)
        except ValueError:
            raise ValueError(
                "num_replicas must be 'auto' or left out when autoscaling_config is set, "
                f"got {self.num_replicas!r}"
            ) from None
        _ranged(DeploymentConfig, options)
        return self

    def options(self) -> dict[str, Any]:
        """What goes to ``Deployment.options``: every key the file set but modelplex's own."""
        fields = {k: v for k, v in self.set_fields().items() if v is not None}
        fields.pop("max_num_models_per_replica", None)
        return fields


def _route_prefix(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must start with '/', got {value!r}")
    if len(value) > 1 and value.endswith("/"):
        raise ValueError(f"must not end with '/', got {value!r}")
    return value


def _import_path(value: str) -> str:
    module, attr = split_import_path(value)
    if not module or not attr:
        raise ValueError(f"must be 'module:attribute' or 'module.attribute', got {value!r}")
    return value


def split_import_path(path: str) -> tuple[str, str]:
    """Ray's two spellings: ``pkg.module:app`` and ``pkg.module.app``."""
    if ":" in path:
        module, _, attr = path.partition(":")
    else:
        module, _, attr = path.rpartition(".")
    return module, attr


class ApplicationSchema(_Schema):
    name: str = Field("default", min_length=1)
    route_prefix: Annotated[str, AfterValidator(_route_prefix)] = "/"
    import_path: Annotated[str, AfterValidator(_import_path)]
    args: dict[str, Any] = Field(default_factory=dict)
    deployments: list[DeploymentSchema] = Field(default_factory=list)
    runtime_env: _unsupported("runtime_env; install the code where modelplex runs") = None
    host: _unsupported("per-application host; use http_options") = None
    port: _unsupported("per-application port; use http_options") = None
    logging_config: _unsupported(
        "per-application logging_config; use the top-level one or the deployments'"
    ) = None
    autoscaling_policy: _unsupported("application-level autoscaling policies") = None
    external_scaler_enabled: _unsupported("external scalers") = None

    @field_validator("deployments")
    @classmethod
    def _unique(cls, deployments: list[DeploymentSchema]) -> list[DeploymentSchema]:
        names = [d.name for d in deployments]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"deployment {twice[0]!r} is listed more than once")
        return deployments

    def code_key(self) -> tuple[str, str]:
        """What Ray calls the code version: a change to it builds the application again."""
        return self.import_path, _canonical(self.args)


class HTTPOptionsSchema(_Schema):
    host: str = DEFAULT_HTTP_HOST
    port: int = DEFAULT_HTTP_PORT
    request_timeout_s: float | None = None
    # modelplex's own limits (HTTPOptions)
    max_body_bytes: int | None = None
    max_header_count: int | None = None
    max_header_bytes: int | None = None
    management_routes: bool | None = None
    management_token: _unsupported(
        "a token does not belong in a file: set MODELPLEX_MANAGEMENT_TOKEN"
    ) = None
    root_path: _unsupported("root_path") = None
    keep_alive_timeout_s: _unsupported("keep_alive_timeout_s") = None
    ssl_keyfile: _unsupported("TLS; put a TLS proxy in front") = None
    ssl_certfile: _unsupported("TLS; put a TLS proxy in front") = None
    ssl_keyfile_password: _unsupported("TLS; put a TLS proxy in front") = None
    ssl_ca_certs: _unsupported("TLS; put a TLS proxy in front") = None

    @model_validator(mode="after")
    def _check(self) -> "HTTPOptionsSchema":
        _ranged(HTTPOptions, self.options())
        return self

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class GRPCOptionsSchema(_Schema):
    """Ray's ``grpc_options``; applies when an instance starts, as ``http_options``."""

    port: int = gRPCOptions.port
    grpc_servicer_functions: list[str] = Field(default_factory=list)
    request_timeout_s: float | None = None
    enable_reflection: bool = gRPCOptions.enable_reflection

    @model_validator(mode="after")
    def _check(self) -> "GRPCOptionsSchema":
        _ranged(gRPCOptions, self.set_fields())
        return self

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class NodeResourcesSchema(_Schema):
    """modelplex's own: the node's inventory, as ``serve.start`` and ``ray.init`` take it
    (``modelplex run`` starts with it; the CLI's --num-cpus/--num-gpus/--resources win)."""

    num_cpus: int | None = None
    num_gpus: int | None = None
    resources: dict[str, float] | None = None

    @model_validator(mode="after")
    def _check(self) -> "NodeResourcesSchema":
        _ranged(NodeResources, self.set_fields())
        return self

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in self.set_fields().items() if v is not None}


class DeploySchema(_Schema):
    """A whole config file: what ``modelplex run`` serves and ``modelplex deploy`` applies."""

    applications: list[ApplicationSchema]
    node_resources: NodeResourcesSchema = Field(default_factory=NodeResourcesSchema)
    http_options: HTTPOptionsSchema = Field(default_factory=HTTPOptionsSchema)
    logging_config: LoggingSchema = Field(default_factory=LoggingSchema)
    proxy_location: Annotated[
        Literal["HeadOnly", "EveryNode", "Disabled"],
        _explained("'HeadOnly', 'EveryNode' or 'Disabled'"),
    ] | None = None
    grpc_options: GRPCOptionsSchema = Field(default_factory=GRPCOptionsSchema)
    controller_options: _unsupported("controller_options") = None
    tracing_config: _unsupported("tracing") = None
    target_capacity: _unsupported("target_capacity") = None

    @field_validator("proxy_location")
    @classmethod
    def _proxy_location(cls, value: str | None) -> str | None:
        if value == "Disabled":
            raise ValueError("not supported yet: 'Disabled'; use 'HeadOnly' or 'EveryNode'")
        return value

    @field_validator("applications")
    @classmethod
    def _unique(cls, apps: list[ApplicationSchema]) -> list[ApplicationSchema]:
        for key in ("name", "route_prefix"):
            values = [getattr(a, key) for a in apps]
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                raise ValueError(f"two applications have the {key} {twice[0]!r}")
        return apps


def parse_config(data: Any) -> DeploySchema:
    """Validate a config (YAML or JSON, already parsed); ``ConfigError`` lists every problem."""
    if not isinstance(data, Mapping):
        raise ConfigError([f"the config must be a mapping with 'applications', got {type(data).__name__}"])
    try:
        return DeploySchema.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError([_describe(e) for e in exc.errors(include_url=False)]) from None


def load_config(path: str) -> DeploySchema:
    """Read and validate a YAML config file."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError([f"{path}: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{path}:{where}: not valid YAML: {problem}"]) from None
    return parse_config(data)


def config_dict(config: DeploySchema) -> dict[str, Any]:
    """The config as JSON-ready data, only the keys that were set (what ``deploy`` sends)."""
    return config.model_dump(exclude_unset=True)


def _canonical(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=repr)


# ---- error messages ---------------------------------------------------------------------------

_SECTIONS: dict[str, type[_Schema]] = {
    "applications": ApplicationSchema,
    "deployments": DeploymentSchema,
    "autoscaling_config": AutoscalingSchema,
    "ray_actor_options": RayActorOptionsSchema,
    "http_options": HTTPOptionsSchema,
    "grpc_options": GRPCOptionsSchema,
    "logging_config": LoggingSchema,
    "node_resources": NodeResourcesSchema,
}
_FIELD_FIRST = re.compile(r"^([a-z_]+) (must .*|is .*|has .*)$", re.DOTALL)


def format_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe(error: Mapping[str, Any]) -> str:
    """One pydantic error as ``path: message``, in _config's "must be ..., got ..." style."""
    loc = tuple(p for p in error["loc"] if not _is_union_tag(p))
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = ", ".join(sorted(k for k, f in model.model_fields.items() if not _refused(f)))
        return f"{format_path(loc)}: unknown key (allowed: {allowed})"
    if kind == "missing":
        return f"{format_path(loc)}: required"
    if kind in ("unsupported", "type") or kind.startswith("value_error") or kind == "assertion_error":
        msg = msg.removeprefix("Value error, ")
        match = _FIELD_FIRST.match(msg)
        if match and match.group(1) in _model_at(loc).model_fields:
            loc, msg = loc + (match.group(1),), match.group(2)
        return f"{format_path(loc)}: {msg}"
    ctx = error.get("ctx") or {}
    bound = {"greater_than_equal": ">= {ge}", "greater_than": "> {gt}", "less_than_equal": "<= {le}",
             "less_than": "< {lt}", "string_too_short": "a non-empty string"}
    if kind in bound:
        msg = "must be " + bound[kind].format(**ctx)
    elif kind in _TYPES:
        msg = f"must be {_TYPES[kind]}"
    else:
        msg = msg[:1].lower() + msg[1:]
    return f"{format_path(loc)}: {msg}, got {error.get('input')!r}"


_TYPES = {
    "int_type": "an int", "int_from_float": "an int", "float_type": "a number",
    "string_type": "a string", "bool_type": "true or false", "dict_type": "a mapping",
    "list_type": "a list", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "literal_error": "one of the listed values",
}


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (part in ("int", "str", "float", "bool") or "[" in part)


def _refused(field: Any) -> bool:
    return any(isinstance(m, AfterValidator) and m.func.__name__ == "refuse" for m in field.metadata)


def _model_at(loc: tuple) -> type[_Schema]:
    """The schema class that the mapping at ``loc`` is validated with."""
    for part in reversed(loc):
        if isinstance(part, str) and part in _SECTIONS:
            return _SECTIONS[part]
    return DeploySchema
