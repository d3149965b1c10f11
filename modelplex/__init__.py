"""modelplex: serve many models from a shared pool of replicas.

Written so that Ray Serve's model multiplexing code runs with ``import modelplex as serve``.
"""

from ._admin import ModelStatus
from ._api import (
    configure_multiplexing,
    delete,
    get_app_handle,
    get_deployment_handle,
    list_models,
    list_proxies,
    pin_model,
    preload_model,
    run,
    shutdown,
    start,
    unload_model,
    unpin_model,
)
from ._backends import ProxyInfo
from ._config import HTTPOptions
from ._context import get_multiplexed_model_id
from ._deployment import Application, Deployment, deployment
from ._errors import (
    ApplicationNotFoundError,
    BackPressureError,
    BadRequestError,
    ClientDisconnectedError,
    DeploymentFailedError,
    DeploymentNotFoundError,
    HeadersTooLargeError,
    MethodNotFoundError,
    MissingModelIdError,
    ModelCacheClosedError,
    ModelIdError,
    ModelLoadBackoffError,
    ModelLoadTimeoutError,
    ModelplexError,
    ModelTooLargeError,
    NoModelLoaderError,
    PayloadTooLargeError,
    PortInUseError,
    RemoteError,
    ReplicaDiedError,
    RequestTimeoutError,
    RouteNotFoundError,
    UnauthorizedError,
    UnserializableResultError,
)
from ._handle import DeploymentHandle, DeploymentResponse
from ._multiplex import multiplexed

__version__ = "0.1.0"

__all__ = [
    "Application",
    "ApplicationNotFoundError",
    "BackPressureError",
    "BadRequestError",
    "ClientDisconnectedError",
    "Deployment",
    "DeploymentFailedError",
    "DeploymentHandle",
    "DeploymentNotFoundError",
    "DeploymentResponse",
    "HTTPOptions",
    "HeadersTooLargeError",
    "MethodNotFoundError",
    "MissingModelIdError",
    "ModelCacheClosedError",
    "ModelIdError",
    "ModelLoadBackoffError",
    "ModelLoadTimeoutError",
    "ModelStatus",
    "ModelTooLargeError",
    "ModelplexError",
    "NoModelLoaderError",
    "PayloadTooLargeError",
    "PortInUseError",
    "ProxyInfo",
    "RemoteError",
    "ReplicaDiedError",
    "RequestTimeoutError",
    "RouteNotFoundError",
    "UnauthorizedError",
    "UnserializableResultError",
    "configure_multiplexing",
    "delete",
    "deployment",
    "get_app_handle",
    "get_deployment_handle",
    "get_multiplexed_model_id",
    "list_models",
    "list_proxies",
    "multiplexed",
    "pin_model",
    "preload_model",
    "run",
    "shutdown",
    "start",
    "unload_model",
    "unpin_model",
]
