"""The errors modelplex raises, in one small tree, and the one table mapping errors to HTTP.

    ModelplexError                      HTTP status (500 unless given)
    ├── DeploymentFailedError           a replica's constructor (or reconfigure) raised; carries the traceback
    │   └── InsufficientResourcesError  its replicas ask for more than the node has in all; carries
    │                                        `resource`, `requested` and `total`
    ├── ModelIdError (ValueError)       400: the model id is missing or malformed
    │   └── MissingModelIdError         400: a multiplexed loader was called without a model id
    ├── ModelLoadTimeoutError (TimeoutError)   504: the loader ran past its time limit
    ├── ModelLoadBackoffError           503: the loader kept failing; not retried until a backoff ends
    ├── ModelTooLargeError              507: a model larger than the whole byte budget
    ├── ModelCacheClosedError (RuntimeError)   503: the replica is stopping; its models are gone
    ├── NoModelLoaderError (TypeError)  400: preload or pin on a deployment without a loader
    ├── ReplicaDiedError                503: the replica serving the request died
    ├── ReplicasNotReadyError (TimeoutError)   503: a deployment's replicas did not come up in time
    ├── ShuttingDownError               503: modelplex is shutting down
    ├── UnserializableArgumentsError (TypeError)   a handle call's arguments cannot be pickled
    ├── BackPressureError               503: queue full; carries `queued` and `limit`
    │                                        (429 when one model id's backlog is full: `model_id`)
    ├── RequestTimeoutError (TimeoutError)     504: no answer within the request timeout
    ├── MethodNotFoundError (AttributeError)   the deployment has no such method
    ├── UnserializableResultError (TypeError)  a return value that cannot become a response
    ├── RemoteError                     an exception from a replica that could not travel as itself
    ├── ClientDisconnectedError         the HTTP client went away; nothing is sent
    ├── BadRequestError (ValueError)    400: a management request's body or arguments are invalid
    │   └── ConfigError                 400: a config file is invalid; one line per problem, each
    │                                        naming its place (``applications[0].name: ...``)
    ├── UnauthorizedError               401: management routes need the bearer token
    ├── RouteNotFoundError              404: no application, or management route, at that path
    ├── PortInUseError (OSError)        the HTTP or gRPC port is taken; carries `host` and `port`
    ├── ApplicationNotFoundError (KeyError)    404: no application of that name
    ├── DeploymentNotFoundError (KeyError)     404: the application has no deployment of that name
    ├── PayloadTooLargeError            413: the request body is over ``max_body_bytes``
    ├── HeadersTooLargeError            431: the request head is over ``max_header_bytes``/count
    ├── ModelNotFoundError (FileNotFoundError)   404: ``serve.fetch`` found no object at the URI
    ├── StorageAccessDeniedError (PermissionError)   403: the store refused to serve the URI
    ├── StorageUnavailableError (ConnectionError)    503: the store did not answer before the deadline
    └── DiskCacheFullError (OSError)    507: no room on the node's disk for the artifact (ENOSPC)

The storage errors name the URI without credentials (no userinfo, no query string) and, when
raised inside a loader, the model id being loaded.

A builtin base in parentheses is there so that ``except ValueError`` and the like keep working.
Every class pickles as itself with its fields, so an error raised in a replica reaches the
caller unchanged; an exception raised by user code in a replica is raised again in the caller
as its own type when it can be pickled, with the remote traceback attached as its ``__cause__``.

Outside the tree, on purpose:

- Checking configuration and arguments (``@serve.deployment``, ``@serve.multiplexed``,
  ``HTTPOptions``, ``handle.options``, ``serve.run``, ``serve.configure_multiplexing``) raises
  ``TypeError``/``ValueError`` naming the option and the value; a user-supplied function that
  returns the wrong kind of value (a model size function) raises ``TypeError`` naming it.
- Using the API in the wrong place (``.result()`` inside an event loop, a handle or a loader
  called outside a running application, ``serve.*`` before ``serve.run``) raises
  ``RuntimeError`` saying what to do instead; ``DeploymentResponse.result(timeout_s=...)`` raises
  ``RequestTimeoutError``.
- The internal channel's ``ConnectionClosed``/``AuthenticationError`` (``ConnectionError``) never
  reach a caller: routers turn a lost replica into ``ReplicaDiedError``.

``error_response`` is the one table from an exception to the answer an HTTP client gets: the
proxy, the model management routes, the replica (for Starlette's ``HTTPException``) and the
HTTP protocol (for an oversized head) all answer through it.

The module is longer than most because it is one thing: the tree drawn above, each class with
its fields and message, and the table at the end; splitting it would part the picture from
what it draws.
"""

from __future__ import annotations

import errno
import math
from typing import NamedTuple

from starlette.exceptions import HTTPException

# The public error tree: re-exported by ``modelplex.exceptions`` and ``modelplex`` from this
# one list. ``error_response`` and the other helpers are for modelplex's own modules.
__all__ = [
    "ApplicationNotFoundError",
    "BackPressureError",
    "BadRequestError",
    "ClientDisconnectedError",
    "ConfigError",
    "DeploymentFailedError",
    "DeploymentNotFoundError",
    "DiskCacheFullError",
    "HeadersTooLargeError",
    "InsufficientResourcesError",
    "MethodNotFoundError",
    "MissingModelIdError",
    "ModelCacheClosedError",
    "ModelIdError",
    "ModelLoadBackoffError",
    "ModelLoadTimeoutError",
    "ModelNotFoundError",
    "ModelTooLargeError",
    "ModelplexError",
    "NoModelLoaderError",
    "PayloadTooLargeError",
    "PortInUseError",
    "RemoteError",
    "ReplicaDiedError",
    "ReplicasNotReadyError",
    "RequestTimeoutError",
    "RouteNotFoundError",
    "ShuttingDownError",
    "StorageAccessDeniedError",
    "StorageUnavailableError",
    "UnauthorizedError",
    "UnserializableArgumentsError",
    "UnserializableResultError",
]


def _rebuild(cls: type, args: tuple, fields: dict) -> BaseException:
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(fields)
    return exc


class ModelplexError(Exception):
    """Base of every error modelplex raises itself."""

    http_status: int = 500  # the status ``error_response`` answers with

    def __reduce__(self):
        # Rebuilt from its args and fields, not by calling __init__ again, so the message
        # (already formatted) and every field come back exactly as they left.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))

    @property
    def retry_after_s(self) -> int:
        """For a 503: when a client may try again (the Retry-After header)."""
        return 1

    def response_text(self) -> str:
        """What an HTTP client reads: the first line (tracebacks stay in the logs)."""
        message = str(self).splitlines()[0] if str(self).strip() else ""
        return message or type(self).__name__


class DeploymentFailedError(ModelplexError):
    def __init__(
        self, deployment: str, message: str, traceback: str = "", *, action: str = "start"
    ) -> None:
        super().__init__(
            f"Deployment '{deployment}' failed to {action}: {message}\n{traceback}".rstrip()
        )
        self.deployment = deployment
        self.message = message
        self.traceback = traceback
        self.action = action  # "start", or "reconfigure"


class InsufficientResourcesError(DeploymentFailedError):
    """On a backend that places replicas itself (local), a deployment whose replicas could
    never start on the node: one asks for more of ``resource`` than the node's ``total``, or
    the application's replicas do not fit together. Raised by ``serve.run`` at once."""

    def __init__(
        self, deployment: str, resource: str, requested: float, total: float, message: str = ""
    ) -> None:
        hint = {"CPU": "num_cpus=...", "GPU": "num_gpus=..."}.get(resource, "resources={...}")
        message = message or (
            f"a replica asks for {requested:g} {resource}, and the node has {total:g}"
        )
        super().__init__(
            deployment,
            f"{message} (the node's inventory is detected, or given to serve.start({hint}) "
            "or `modelplex start`)",
        )
        self.resource = resource
        self.requested = requested
        self.total = total


class ModelIdError(ModelplexError, ValueError):
    http_status = 400


class MissingModelIdError(ModelIdError):
    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or "No model id in this request: send the header 'serve_multiplexed_model_id' "
            "(or 'serve-multiplexed-model-id'), the gRPC metadata 'multiplexed_model_id', or "
            "call handle.options(multiplexed_model_id=...)."
        )


class ModelLoadTimeoutError(ModelplexError, TimeoutError):
    http_status = 504

    def __init__(self, model_id: str, timeout_s: float) -> None:
        super().__init__(f"Loading model '{model_id}' took longer than {timeout_s}s.")
        self.model_id = model_id
        self.timeout_s = timeout_s


class ModelLoadBackoffError(ModelplexError):
    http_status = 503

    def __init__(self, model_id: str, failures: int, retry_in_s: float, last_error: object) -> None:
        error = (
            f"{type(last_error).__name__}: {last_error}"
            if isinstance(last_error, BaseException)
            else str(last_error)
        )
        super().__init__(
            f"Loading model '{model_id}' failed {failures} times in a row; not retrying for "
            f"{retry_in_s:.1f}s. Last error: {error}"
        )
        self.model_id = model_id
        self.failures = failures
        self.retry_in_s = retry_in_s
        self.last_error = error

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.retry_in_s))


class ModelTooLargeError(ModelplexError):
    http_status = 507

    def __init__(self, model_id: str, size: int, limit: int) -> None:
        super().__init__(
            f"Model '{model_id}' needs {size} bytes, more than the replica's whole "
            f"budget of {limit} bytes."
        )
        self.model_id = model_id
        self.size = size
        self.limit = limit


class ModelCacheClosedError(ModelplexError, RuntimeError):
    http_status = 503


class NoModelLoaderError(ModelplexError, TypeError):
    http_status = 400

    def __init__(self, replica_id: str) -> None:
        super().__init__(
            f"Replica '{replica_id}' has no @serve.multiplexed loader to preload or pin with."
        )
        self.replica_id = replica_id


class ShuttingDownError(ModelplexError):
    """modelplex is shutting down: the request was refused, or its router closed under it."""

    http_status = 503

    def __init__(self, message: str = "modelplex is shutting down") -> None:
        super().__init__(message)


class ReplicasNotReadyError(ModelplexError, TimeoutError):
    http_status = 503

    def __init__(self, deployment: str, timeout_s: float) -> None:
        super().__init__(f"The replicas of {deployment} were not ready within {timeout_s}s.")
        self.deployment = deployment
        self.timeout_s = timeout_s


class UnserializableArgumentsError(ModelplexError, TypeError):
    """The arguments of a handle call cannot be pickled, so they cannot reach a replica."""


class ReplicaDiedError(ModelplexError):
    http_status = 503

    def __init__(self, replica_id: str, detail: str = "") -> None:
        msg = f"Replica '{replica_id}' died while serving the request"
        super().__init__(f"{msg}: {detail}" if detail else f"{msg}.")
        self.replica_id = replica_id
        self.detail = detail


class BackPressureError(ModelplexError):
    """Too many requests wait. With ``model_id`` set, that model id's own backlog is full
    (``max_queued_requests_per_model``, 429): the caller should slow down, not go elsewhere.
    Without it, the deployment's (``max_queued_requests``, 503)."""

    def __init__(
        self, deployment: str, queued: int, limit: int, model_id: str = "",
        retry_after_s: int = 1,
    ) -> None:
        if model_id:
            message = (
                f"Model '{model_id}' has {queued} requests queued in deployment "
                f"'{deployment}', at its limit of {limit} (max_queued_requests_per_model)."
            )
        else:
            message = (
                f"Deployment '{deployment}' has {queued} requests queued, at its limit of "
                f"{limit} (max_queued_requests)."
            )
        super().__init__(message)
        self.deployment = deployment
        self.queued = queued
        self.limit = limit
        self.model_id = model_id
        self.retry_after = max(1, int(retry_after_s))

    @property
    def http_status(self) -> int:  # type: ignore[override]
        return 429 if getattr(self, "model_id", "") else 503

    @property
    def retry_after_s(self) -> int:
        return getattr(self, "retry_after", 1)


class RequestTimeoutError(ModelplexError, TimeoutError):
    http_status = 504

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"The request got no answer within {timeout_s}s.")
        self.timeout_s = timeout_s


class MethodNotFoundError(ModelplexError, AttributeError):
    def __init__(self, deployment: str, method: str) -> None:
        super().__init__(f"Deployment '{deployment}' has no method '{method}'")
        self.deployment = deployment
        self.method = method


class UnserializableResultError(ModelplexError, TypeError):
    """A return value that cannot be sent back: not picklable, or (over HTTP) not a response."""


class ClientDisconnectedError(ModelplexError):
    """The HTTP client went away before its answer; the proxy cancels the work and says nothing."""

    http_status = 499  # never sent: there is nobody to send it to

    def __init__(self, message: str = "the client disconnected before its answer") -> None:
        super().__init__(message)


class BadRequestError(ModelplexError, ValueError):
    http_status = 400


class ConfigError(BadRequestError):
    """A config (file or ``PUT /-/applications``) that cannot be applied; nothing changed."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = list(errors)

    def response_text(self) -> str:
        return "\n".join(self.errors)  # every problem, not only the first


class UnauthorizedError(ModelplexError):
    http_status = 401


class RouteNotFoundError(ModelplexError):
    http_status = 404


class PortInUseError(ModelplexError, OSError):
    """An ``OSError`` too, so code that caught the bind error as one still does."""

    def __init__(self, host: str, port: int, option: str = "http_options") -> None:
        super().__init__(
            errno.EADDRINUSE,
            f"Port {port} on {host} is in use: stop what listens there, or pass "
            f"{option}={{'port': ...}} with a free port (0 picks one).",
        )
        self.host = host
        self.port = port
        self.option = option  # which options' port: "http_options" or "grpc_options"

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 98]"
        return self.strerror

    def __reduce__(self):
        return (type(self), (self.host, self.port, self.option))


class _NotFound(ModelplexError, KeyError):
    http_status = 404

    __str__ = BaseException.__str__  # the message, not KeyError's repr() of it


class ApplicationNotFoundError(_NotFound):
    def __init__(self, app: str) -> None:
        super().__init__(f"no application named {app!r}")
        self.app = app


class DeploymentNotFoundError(_NotFound):
    def __init__(self, app: str, deployment: str) -> None:
        super().__init__(f"application {app!r} has no deployment {deployment!r}")
        self.app = app
        self.deployment = deployment


class PayloadTooLargeError(ModelplexError):
    http_status = 413


class HeadersTooLargeError(ModelplexError):
    http_status = 431


class _StorageOSError(ModelplexError, OSError):
    """An ``OSError`` with its errno, so ``except FileNotFoundError`` and ``exc.errno`` work;
    pickled by calling ``__init__`` again with its fields (OSError keeps errno outside
    ``__dict__``)."""

    _errno = 0
    _fields: tuple[str, ...] = ("strerror",)  # its __init__ arguments, by attribute name

    def __init__(self, message: str) -> None:
        super().__init__(self._errno, message)

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 2]"
        return self.strerror

    def __reduce__(self):
        return (type(self), tuple(getattr(self, name) for name in self._fields))


def _about(uri: str, model_id: str) -> str:
    return f"{uri} (model '{model_id}')" if model_id else uri


class ModelNotFoundError(_StorageOSError, FileNotFoundError):
    http_status = 404
    _errno = errno.ENOENT
    _fields = ("uri", "model_id")

    def __init__(self, uri: str, model_id: str = "") -> None:
        super().__init__(f"No object at {_about(uri, model_id)}.")
        self.uri = uri
        self.model_id = model_id


class StorageAccessDeniedError(_StorageOSError, PermissionError):
    http_status = 403
    _errno = errno.EACCES
    _fields = ("uri", "model_id", "detail")

    def __init__(self, uri: str, model_id: str = "", detail: str = "") -> None:
        msg = f"Access denied to {_about(uri, model_id)}"
        super().__init__(f"{msg}: {detail}" if detail else f"{msg}.")
        self.uri = uri
        self.model_id = model_id
        self.detail = detail


class StorageUnavailableError(_StorageOSError, ConnectionError):
    http_status = 503
    _errno = errno.EHOSTUNREACH
    _fields = ("uri", "attempts", "waited_s", "model_id", "detail")

    def __init__(
        self, uri: str, attempts: int, waited_s: float, model_id: str = "", detail: str = ""
    ) -> None:
        msg = (
            f"The store did not answer for {_about(uri, model_id)} after {attempts} attempts "
            f"in {waited_s:.1f}s"
        )
        super().__init__(f"{msg}: {detail}" if detail else f"{msg}.")
        self.uri = uri
        self.attempts = attempts
        self.waited_s = waited_s
        self.model_id = model_id
        self.detail = detail

    @property
    def retry_after_s(self) -> int:
        return 5


class DiskCacheFullError(_StorageOSError):
    http_status = 507
    _errno = errno.ENOSPC
    _fields = ("uri", "needed", "detail")

    def __init__(self, uri: str, needed: int, detail: str = "") -> None:
        msg = f"No room on this node's disk for {uri} ({needed} bytes)"
        super().__init__(f"{msg}: {detail}" if detail else f"{msg}.")
        self.uri = uri
        self.needed = needed
        self.detail = detail


class RemoteError(ModelplexError):
    """An exception raised in a replica whose own type could not be sent back."""

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}\n\nRemote traceback:\n{traceback}".rstrip())
        self.type_name = type_name
        self.message = message
        self.traceback = traceback


class RemoteTraceback(Exception):
    """Attached as ``__cause__`` so the replica's traceback prints with the caller's."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f"\n\nRemote traceback:\n{self.tb}"


class ErrorResponse(NamedTuple):
    status: int
    headers: tuple[tuple[bytes, bytes], ...]  # content-type and -length, Retry-After for 429/503
    body: bytes


def error_response(exc: BaseException) -> ErrorResponse:
    """The one table from an exception to the HTTP answer: modelplex's errors by their status
    with their message, Starlette's ``HTTPException`` by its status and detail, anything else
    (user code) 500 naming its type. Only the first line: tracebacks stay in the logs."""
    extra: list[tuple[bytes, bytes]] = []
    if isinstance(exc, HTTPException):
        status, text = exc.status_code, str(exc.detail)
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (exc.headers or {}).items()]
    else:
        message = str(exc).splitlines()[0] if str(exc).strip() else ""
        if isinstance(exc, ModelplexError):
            status, text = exc.http_status, exc.response_text()
            if status in (429, 503):
                extra = [(b"retry-after", str(exc.retry_after_s).encode())]
        else:
            status = 500
            text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    body = text.encode()
    headers = (
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    )
    return ErrorResponse(status, headers, body)


def http_status_for(exc: BaseException) -> int:
    return error_response(exc).status
