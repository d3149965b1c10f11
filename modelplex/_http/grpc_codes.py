"""What the gRPC proxy decides, as pure functions without grpc: which application a call goes
to, what its metadata says, the status code an error becomes, and the built-in service's
replies (``ray.serve.RayServeAPIService``), as Ray Serve 2.60 answers them.

Status codes are grpc's names (``"NOT_FOUND"``); ``grpc_proxy`` turns them into
``grpc.StatusCode``s.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .._errors import (
    BackPressureError,
    ClientDisconnectedError,
    MethodNotFoundError,
    ModelplexError,
    RequestTimeoutError,
)
from .._messages import DeploymentID

__all__ = [
    "HEALTHZ",
    "LIST_APPLICATIONS",
    "HEALTHY_MESSAGE",
    "Invocation",
    "encode_healthz",
    "encode_list_applications",
    "pick_application",
    "status_of",
]

SERVICE = "ray.serve.RayServeAPIService"
LIST_APPLICATIONS = f"/{SERVICE}/ListApplications"
HEALTHZ = f"/{SERVICE}/Healthz"
HEALTHY_MESSAGE = "success"  # Ray's answer to a healthy Healthz
# gRPC status details travel in HTTP/2 trailers, whose size is bounded: Ray cuts them here.
MAX_DETAILS = 4096

# A modelplex error's HTTP status, as the gRPC code that means the same.
_BY_HTTP_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "RESOURCE_EXHAUSTED",
    431: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
    507: "RESOURCE_EXHAUSTED",
}


@dataclass(frozen=True)
class Invocation:
    """The metadata keys the proxy reads (Ray's): ``application``, ``multiplexed_model_id``,
    ``request_id`` and ``session_id``; "" where the client sent none."""

    application: str = ""
    model_id: str = ""
    request_id: str = ""
    session_id: str = ""

    @classmethod
    def parse(cls, metadata: Iterable[tuple[str, Any]] | None) -> "Invocation":
        found: dict[str, str] = {}
        for key, value in metadata or ():
            if key in _KEYS and isinstance(value, str):
                found[_KEYS[key]] = value
        return cls(**found)


_KEYS = {
    "application": "application",
    "multiplexed_model_id": "model_id",
    "request_id": "request_id",
    "session_id": "session_id",
}


def pick_application(
    routes: Mapping[str, tuple[str, DeploymentID]], application: str
) -> tuple[str, DeploymentID] | str:
    """The (application, ingress) a call goes to, or the ``NOT_FOUND`` message, as Ray's.

    A call that names no application goes to the only one there is. Ray also sends a call
    that names another application to the only one; here a name that does not exist is
    ``NOT_FOUND`` however many run, so a typo never reaches the wrong model server."""
    apps = {name: ingress for name, ingress in routes.values()}
    if application in apps:
        return application, apps[application]
    if not application and len(apps) == 1:
        return next(iter(apps.items()))
    said = (f"Application '{application}' not found." if application
            else "Application metadata not set.")
    return f"{said} Ping {LIST_APPLICATIONS} for available applications."


def status_of(
    exc: BaseException, request_timeout_s: float | None, request_id: str
) -> tuple[str, str]:
    """The (code, details) a failed call answers with, as Ray's ``get_grpc_response_status``:
    a time-out ``DEADLINE_EXCEEDED``, a client gone ``CANCELLED``, a full queue
    ``RESOURCE_EXHAUSTED``, a deployment that cannot serve now ``UNAVAILABLE``, a user's
    exception ``INTERNAL`` with its message. modelplex's other errors take the code that means
    their HTTP status."""
    if isinstance(exc, RequestTimeoutError):
        timeout = exc.timeout_s or request_timeout_s
        said = f"Request timed out after {timeout}s." if timeout else "Request timed out."
        return "DEADLINE_EXCEEDED", said
    if isinstance(exc, (asyncio.CancelledError, ClientDisconnectedError)):
        return "CANCELLED", f"Client for request {request_id} disconnected."
    if isinstance(exc, BackPressureError):
        return "RESOURCE_EXHAUSTED", _cut(str(exc))
    if isinstance(exc, MethodNotFoundError):
        return "UNIMPLEMENTED", _cut(str(exc))
    if isinstance(exc, ModelplexError):
        return _BY_HTTP_STATUS.get(exc.http_status, "INTERNAL"), _cut(str(exc))
    return "INTERNAL", _cut(str(exc) or type(exc).__name__)


def _cut(message: str) -> str:
    if len(message) <= MAX_DETAILS:
        return message
    notice = "... [truncated]"
    return message[: MAX_DETAILS - len(notice)] + notice


# ---- the built-in service's messages, in protobuf's wire format ---------------------------------
# ``ListApplicationsResponse {repeated string application_names = 1;}`` and
# ``HealthzResponse {string message = 1;}``: one length-delimited field each, so no protobuf
# runtime is needed to answer them.


def encode_list_applications(names: Iterable[str]) -> bytes:
    return b"".join(_string_field(1, name) for name in names)


def encode_healthz(message: str) -> bytes:
    return _string_field(1, message)


def _string_field(number: int, text: str) -> bytes:
    data = text.encode()
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)
