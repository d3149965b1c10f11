"""The errors modelplex raises, in one small tree.

    ModelplexError
    ├── DeploymentFailedError       a replica's constructor raised; carries the traceback
    ├── ModelIdError (ValueError)   400: the model id is missing or malformed
    │   └── MissingModelIdError     a multiplexed loader was called without a model id
    ├── ModelLoadTimeoutError (TimeoutError)   the loader ran past its time limit
    ├── ModelLoadBackoffError       503: the loader kept failing; not retried until a backoff ends
    ├── ModelTooLargeError          a model larger than the whole byte budget
    ├── ReplicaDiedError            503: the replica serving the request died
    ├── BackPressureError           503: queue full; carries `queued` and `limit`
    ├── RequestTimeoutError (TimeoutError)     504: no answer within the request timeout
    ├── RouteNotFoundError          404: no application at that route prefix
    └── RemoteError                 an exception from a replica that could not travel as itself

An exception raised by user code in a replica is raised again in the caller as its own type
when it can be pickled, with the remote traceback attached as its ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "BackPressureError",
    "DeploymentFailedError",
    "MissingModelIdError",
    "ModelIdError",
    "ModelLoadBackoffError",
    "ModelLoadTimeoutError",
    "ModelTooLargeError",
    "ModelplexError",
    "RemoteError",
    "ReplicaDiedError",
    "RequestTimeoutError",
    "RouteNotFoundError",
    "RemoteTraceback",
]


class ModelplexError(Exception):
    """Base of every error modelplex raises itself."""

    # Subclasses that map to an HTTP status say so here; see ``http_status_for``.
    http_status: int = 500


class DeploymentFailedError(ModelplexError):
    def __init__(self, deployment: str, message: str, traceback: str = "") -> None:
        super().__init__(f"Deployment '{deployment}' failed to start: {message}\n{traceback}".rstrip())
        self.deployment = deployment
        self.traceback = traceback

    def __reduce__(self):  # keep named fields across pickling
        return (type(self), (self.deployment, str(self).split(": ", 1)[-1], self.traceback))


class ModelIdError(ModelplexError, ValueError):
    http_status = 400


class MissingModelIdError(ModelIdError):
    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or "No model id in this request: send the header 'serve_multiplexed_model_id' "
            "(or 'serve-multiplexed-model-id'), or call "
            "handle.options(multiplexed_model_id=...)."
        )


class ModelLoadTimeoutError(ModelplexError, TimeoutError):
    http_status = 504

    def __init__(self, model_id: str, timeout_s: float) -> None:
        super().__init__(f"Loading model '{model_id}' took longer than {timeout_s}s.")
        self.model_id = model_id
        self.timeout_s = timeout_s

    def __reduce__(self):
        return (type(self), (self.model_id, self.timeout_s))


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

    def __reduce__(self):
        return (type(self), (self.model_id, self.failures, self.retry_in_s, self.last_error))


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

    def __reduce__(self):
        return (type(self), (self.model_id, self.size, self.limit))


class ReplicaDiedError(ModelplexError):
    http_status = 503

    def __init__(self, replica_id: str, detail: str = "") -> None:
        msg = f"Replica '{replica_id}' died while serving the request"
        super().__init__(f"{msg}: {detail}" if detail else f"{msg}.")
        self.replica_id = replica_id
        self.detail = detail

    def __reduce__(self):
        return (type(self), (self.replica_id, self.detail))


class BackPressureError(ModelplexError):
    http_status = 503

    def __init__(self, deployment: str, queued: int, limit: int) -> None:
        super().__init__(
            f"Deployment '{deployment}' has {queued} requests queued, at its limit of "
            f"{limit} (max_queued_requests)."
        )
        self.deployment = deployment
        self.queued = queued
        self.limit = limit

    def __reduce__(self):
        return (type(self), (self.deployment, self.queued, self.limit))


class RequestTimeoutError(ModelplexError, TimeoutError):
    http_status = 504

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"The request got no answer within {timeout_s}s.")
        self.timeout_s = timeout_s

    def __reduce__(self):
        return (type(self), (self.timeout_s,))


class RouteNotFoundError(ModelplexError):
    http_status = 404


class ClientDisconnectedError(ModelplexError):
    """The HTTP client went away before its answer; the proxy cancels the work and says nothing."""

    http_status = 499

    def __init__(self, message: str = "the client disconnected before its answer") -> None:
        super().__init__(message)


class RemoteError(ModelplexError):
    """An exception raised in a replica whose own type could not be sent back."""

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}\n\nRemote traceback:\n{traceback}".rstrip())
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __reduce__(self):
        return (type(self), (self.type_name, self.message, self.traceback))


class RemoteTraceback(Exception):
    """Attached as ``__cause__`` so the replica's traceback prints with the caller's."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f"\n\nRemote traceback:\n{self.tb}"


def http_status_for(exc: BaseException) -> int:
    """The one place that maps an error to an HTTP status code."""
    if isinstance(exc, ModelplexError):
        return exc.http_status
    return 500
