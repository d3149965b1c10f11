"""modelplex: serve many models from a shared pool of replicas.

Written so that Ray Serve's model multiplexing code runs with ``import modelplex as serve``.
"""

from ._driver.api import (
    configure_multiplexing,
    delete,
    get_app_handle,
    get_deployment_handle,
    list_artifacts,
    list_models,
    list_proxies,
    pin_model,
    preload_model,
    run,
    set_model_weights,
    shutdown,
    start,
    status,
    unload_model,
    unpin_model,
)
from ._specs import ProxyInfo
from ._user.batch import batch
from ._types import (
    ApplicationStatus,
    ArtifactStatus,
    DeploymentStatus,
    ModelStatus,
    ReplicaStatus,
    ServeStatus,
)
from ._config import HTTPOptions
from ._context import ReplicaContext, get_multiplexed_model_id, get_replica_context
from ._user.fetch import fetch
from ._user.deployment import Application, Deployment, deployment
from .exceptions import *  # noqa: F403  (the error tree, listed once: _errors.__all__)
from ._user.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator
from ._user.ingress import ingress
from ._user.multiplex import multiplexed
from . import config, exceptions, grpc_util, handle  # Ray's module paths: modelplex.handle, ...

__version__ = "0.1.0"

__all__ = [
    "Application",
    "ApplicationStatus",
    "ArtifactStatus",
    "Deployment",
    "DeploymentHandle",
    "DeploymentResponse",
    "DeploymentResponseGenerator",
    "DeploymentStatus",
    "HTTPOptions",
    "ModelStatus",
    "ProxyInfo",
    "ReplicaContext",
    "ReplicaStatus",
    "ServeStatus",
    "batch",
    "configure_multiplexing",
    "delete",
    "deployment",
    "fetch",
    "get_app_handle",
    "get_deployment_handle",
    "get_multiplexed_model_id",
    "get_replica_context",
    "ingress",
    "list_artifacts",
    "list_models",
    "list_proxies",
    "multiplexed",
    "pin_model",
    "preload_model",
    "run",
    "set_model_weights",
    "shutdown",
    "start",
    "status",
    "unload_model",
    "unpin_model",
    *exceptions.__all__,
]
