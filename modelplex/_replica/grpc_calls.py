"""gRPC calls in the replica, as Ray Serve runs them.

The proxy names the method (the RPC's own name) and sends the request message; the method gets
it, and a ``grpc_context`` keyword argument if it declares one. Its response message (or each
one a server-streaming method yields) is serialized here, so the proxy only copies bytes.
What the method set on the context (a status code, details, trailing metadata) goes back with
the reply; an exception raised after it set a code keeps that code, as in Ray.

Nothing here imports grpc: status codes travel by name, and the proxy turns them back.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Awaitable, Callable

from .._messages import Call, GRPCReply, GRPCRequest

__all__ = ["GRPC_CONTEXT_ARG_NAME", "RayServegRPCContext", "grpc_kwargs", "serialize"]

logger = logging.getLogger("modelplex.replica")

GRPC_CONTEXT_ARG_NAME = "grpc_context"  # Ray's name for the keyword argument


class RayServegRPCContext:
    """What a gRPC method sees of its call, with Ray Serve's methods
    (``ray.serve.grpc_util.RayServegRPCContext``): the client's metadata and address, and the
    status code, details and trailing metadata the method sets for its reply.

    modelplex's gRPC proxy serves without TLS, so the auth context says "insecure" and there
    are no peer identities."""

    def __init__(self, request: GRPCRequest) -> None:
        self._invocation_metadata = list(request.metadata)
        self._invocation_metadata_dict = dict(request.metadata)
        self._peer = request.peer
        self._method = request.method
        self._code: Any = None
        self._details = ""
        self._compression: Any = None
        self._trailing_metadata: list[tuple[str, Any]] = [("request_id", request.request_id)]

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"transport_security_type": [b"insecure"]}

    def code(self) -> Any:
        """The ``grpc.StatusCode`` the method set, or None."""
        return self._code

    def details(self) -> str:
        return self._details

    def request_id(self) -> str | None:
        return self._invocation_metadata_dict.get("request_id")

    def application(self) -> str | None:
        return self._invocation_metadata_dict.get("application")

    def multiplexed_model_id(self) -> str | None:
        return self._invocation_metadata_dict.get("multiplexed_model_id")

    def traceparent(self) -> str | None:
        return self._invocation_metadata_dict.get("traceparent")

    def tracestate(self) -> str | None:
        return self._invocation_metadata_dict.get("tracestate")

    def invocation_metadata(self) -> list[tuple[str, Any]]:
        return self._invocation_metadata

    def peer(self) -> str:
        return self._peer

    def peer_identities(self) -> None:
        return None

    def peer_identity_key(self) -> None:
        return None

    def trailing_metadata(self) -> list[tuple[str, Any]]:
        return self._trailing_metadata

    def set_code(self, code: Any) -> None:
        """A ``grpc.StatusCode`` for the reply."""
        self._code = code

    def set_compression(self, compression: Any) -> None:
        """Kept for Ray's API; the proxy compresses nothing."""
        self._compression = compression

    def set_details(self, details: str) -> None:
        self._details = details

    def set_trailing_metadata(self, trailing_metadata: list[tuple[str, Any]]) -> None:
        """Sent when the call ends; the request id stays first, as in Ray."""
        self._trailing_metadata = self._trailing_metadata[:1] + list(trailing_metadata)

    def reply(self, body: bytes, details: str = "") -> GRPCReply:
        """The reply with what the method set on this context."""
        code = self._code
        name = getattr(code, "name", None) or (str(code) if code else "")
        return GRPCReply(body, name, self._details or details, tuple(self._trailing_metadata))


_takes_context: dict[Any, bool] = {}


def grpc_kwargs(method: Any, context: RayServegRPCContext) -> dict[str, Any]:
    """``{"grpc_context": context}`` for a method that declares the parameter, else ``{}``
    (the answer is kept per function: ``inspect.signature`` costs more than a no-op call)."""
    func = getattr(method, "__func__", method)
    takes = _takes_context.get(func)
    if takes is None:
        try:
            takes = GRPC_CONTEXT_ARG_NAME in inspect.signature(method).parameters
        except (TypeError, ValueError):
            takes = False
        _takes_context[func] = takes
    return {GRPC_CONTEXT_ARG_NAME: context} if takes else {}


def serialize(call: Call, value: Any) -> bytes:
    """A response message as bytes: a protobuf message's ``SerializeToString()``, or bytes
    already serialized."""
    to_string = getattr(value, "SerializeToString", None)
    if to_string is not None:
        return to_string()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(
        f"gRPC method {call.method!r} must return a protobuf message (or yield them, for a "
        f"server-streaming method), got {type(value).__qualname__}"
    )


async def streamed(
    call: Call, items: Any, put: Callable[[bytes], Awaitable[None]], pump: Any
) -> None:
    """Each response message of a server-streaming method, serialized, to ``put``."""

    async def put_serialized(item: Any) -> None:
        await put(serialize(call, item))

    await pump(items, put_serialized)


def user_status_failure(exc: Exception, context: RayServegRPCContext) -> GRPCReply | None:
    """A method that set a status code and then raised keeps its code (Ray's
    ``gRPCStatusError``); None when it set none (the error goes back as itself: INTERNAL)."""
    if not context.code():
        return None
    logger.exception("Request failed with the gRPC status code it set, %s.", context.code())
    return context.reply(b"", str(exc))
