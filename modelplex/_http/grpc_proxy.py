"""The gRPC proxy: Ray Serve's gRPC ingress, beside the HTTP one, on every proxy.

Each method of the user's services (``grpc_services``) and Ray's built-in
``ray.serve.RayServeAPIService`` (``ListApplications``, ``Healthz``) is served here. A call
goes to the application its ``application`` metadata names (or the only one), through the
ingress deployment's router like an HTTP request: ``multiplexed_model_id`` places it on a
holder of the model, and the replica runs the method of the RPC's name (``_replica.grpc_calls``).
A server-streaming RPC streams as the replica yields, within the same credit window as an HTTP
stream; the client's own pace holds the replica back. A client that cancels, or a deadline that
passes, cancels the call down to the replica. Errors become Ray's status codes
(``grpc_codes.status_of``); ``request_id`` comes back in the trailing metadata.

Only this module and ``grpc_server`` import grpc, and only when gRPC is configured.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Callable, Protocol

import grpc

from .._config import gRPCOptions
from .._data.replies import ReplyStream
from .._errors import RequestTimeoutError
from .._messages import DeploymentID, GRPCReply, GRPCRequest
from .._model_ids import validate_model_id
from .access import Access, trace_id
from .grpc_codes import (
    HEALTHY_MESSAGE,
    Invocation,
    encode_healthz,
    encode_list_applications,
    pick_application,
    status_of,
)
from .grpc_services import Method
from .routes import Routes

__all__ = ["GRPCProxy"]

logger = logging.getLogger("modelplex.proxy")


class GRPCRouter(Protocol):
    """What the gRPC proxy uses of an ingress deployment's router (``_data.router.Router``)."""

    async def call(self, method: str, args: tuple = (), kwargs: dict | None = None, *,
                   model_id: str, trace_id: str, on_replica: Callable[[str], None] | None,
                   stream: bool, grpc: GRPCRequest) -> Any: ...


class GRPCRouters(Protocol):
    def router(self, deployment_id: DeploymentID) -> GRPCRouter: ...


class GRPCRecorder(Protocol):
    """The metrics of each call (``_obs.metrics.Metrics.grpc_request``)."""

    def grpc_request(self, route: str, method: str, application: str, code: str,
                     seconds: float) -> None: ...


class _Call:
    """One call's record: where it went and how it ended, for its access line and metrics."""

    __slots__ = ("access", "start", "code", "application", "path", "peer")

    def __init__(self, path: str, peer: str, request_id: str) -> None:
        self.access = Access()
        self.access.request_id = request_id
        self.start = time.perf_counter()
        self.code = "OK"
        self.application = ""
        self.path = path
        self.peer = peer


class GRPCProxy:
    def __init__(
        self,
        routes: Routes,
        registry: GRPCRouters,
        options: gRPCOptions,
        *,
        metrics: GRPCRecorder | None = None,
        access_log: Callable[[], bool] = lambda: True,
        access_log_for: Callable[[DeploymentID], bool] = lambda deployment_id: True,
    ) -> None:
        self._routes = routes
        self._registry = registry
        self._options = options
        self._metrics = metrics
        self._access_log = access_log  # the instance's logging_config.enable_access_log
        self._access_log_for = access_log_for  # the ingress deployment's own

    # ---- the built-in service ------------------------------------------------------------------

    async def list_applications(self, request: bytes, context: Any) -> bytes:
        return encode_list_applications(sorted({app for app, _ in self._routes().values()}))

    async def healthz(self, request: bytes, context: Any) -> bytes:
        return encode_healthz(HEALTHY_MESSAGE)

    # ---- the user's services ---------------------------------------------------------------------

    async def unary(self, method: Method, request: Any, context: Any) -> bytes:
        """A unary RPC: the replica's serialized response."""
        metadata = context.invocation_metadata() or ()
        invocation = Invocation.parse(metadata)
        call = _Call(method.path, context.peer(), invocation.request_id or trace_id())
        try:
            reply = await self._with_timeout(
                self._send(method, request, context, metadata, invocation, call, stream=False)
            )
            self._finish(context, call, reply)
            return reply.body
        except BaseException as exc:
            self._fail(context, call, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise  # the client went away: grpc ends the call
            return b""
        finally:
            self._record(call)

    async def server_stream(self, method: Method, request: Any, context: Any) -> AsyncIterator[bytes]:
        """A server-streaming RPC: each response as the replica yields it."""
        metadata = context.invocation_metadata() or ()
        invocation = Invocation.parse(metadata)
        call = _Call(method.path, context.peer(), invocation.request_id or trace_id())
        timeout = self._options.request_timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        stream: ReplyStream | None = None
        try:
            stream = await self._with_timeout(
                self._send(method, request, context, metadata, invocation, call, stream=True)
            )
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise RequestTimeoutError(timeout)  # type: ignore[arg-type]
                try:
                    batch = await asyncio.wait_for(stream.next_batch(), remaining)
                except asyncio.TimeoutError:
                    raise RequestTimeoutError(timeout) from None  # type: ignore[arg-type]
                if not batch:
                    break
                for item in batch:
                    yield item  # grpc writes it, at the client's pace, before the next
            self._finish(context, call, stream.end_value)
        except BaseException as exc:
            self._fail(context, call, exc)
            if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
                raise
        finally:
            if stream is not None and not stream.finished:
                stream.close()  # cancels the generator at the replica
            self._record(call)

    async def unsupported(self, method: Method, request: Any, context: Any) -> bytes:
        """Client- and bidirectional-streaming RPCs: not served (yet)."""
        context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        context.set_details(
            f"{method.path} streams its requests: modelplex serves unary and server-streaming "
            f"RPCs only."
        )
        return b""

    # ---- one call -----------------------------------------------------------------------------

    async def _send(
        self, method: Method, request: Any, context: Any, metadata: Any, invocation: Invocation,
        call: _Call, *, stream: bool,
    ) -> Any:
        picked = pick_application(self._routes(), invocation.application)
        if isinstance(picked, str):
            raise _NotFound(picked)
        app_name, ingress = picked
        call.application = app_name
        access = call.access
        access.application, access.deployment = app_name, str(ingress)
        access.quiet = not self._access_log_for(ingress)
        model_id = validate_model_id(invocation.model_id)
        access.model_id = model_id
        return await self._registry.router(ingress).call(
            method.name, (request,), model_id=model_id, trace_id=access.request_id,
            on_replica=access.served_by, stream=stream,
            # grpc's metadata items are its own namedtuples: plain pairs pickle far cheaper.
            grpc=GRPCRequest(method.path, tuple((k, v) for k, v in metadata),
                             context.peer(), access.request_id),
        )

    async def _with_timeout(self, awaitable: Any) -> Any:
        timeout = self._options.request_timeout_s
        if timeout is None:
            return await awaitable
        try:
            return await asyncio.wait_for(awaitable, timeout)
        except asyncio.TimeoutError:
            raise RequestTimeoutError(timeout) from None

    def _finish(self, context: Any, call: _Call, reply: GRPCReply) -> None:
        """What the method set on its grpc_context, onto the call; else OK."""
        if reply.code:
            call.code = reply.code
            context.set_code(_code(reply.code))
        if reply.details:
            context.set_details(reply.details)
        context.set_trailing_metadata(reply.trailing_metadata or (("request_id", call.access.request_id),))

    def _fail(self, context: Any, call: _Call, exc: BaseException) -> None:
        if isinstance(exc, _NotFound):
            code, details = "NOT_FOUND", str(exc)
        elif isinstance(exc, GeneratorExit):
            code, details = status_of(asyncio.CancelledError(), None, call.access.request_id)
        else:
            code, details = status_of(exc, self._options.request_timeout_s, call.access.request_id)
        call.code = code
        if code not in ("CANCELLED", "NOT_FOUND", "RESOURCE_EXHAUSTED"):
            logger.warning("gRPC call %s failed: %s: %s", call.path, code, details)
        try:
            context.set_code(_code(code))
            context.set_details(details)
            context.set_trailing_metadata((("request_id", call.access.request_id),))
        except Exception:  # the call is over already (the client cancelled)
            pass

    def _record(self, call: _Call) -> None:
        seconds = time.perf_counter() - call.start
        if self._access_log() and not call.access.quiet:
            call.access.log(
                {"method": call.path, "path": call.application or "-", "client": _peer(call.peer)},
                call.code, seconds,  # type: ignore[arg-type]  (Ray logs gRPC codes by name)
            )
        if self._metrics is not None:
            self._metrics.grpc_request(
                call.application, call.path, call.application, call.code, seconds
            )


class _NotFound(Exception):
    """No application for the call: NOT_FOUND with Ray's message."""


def _code(name: str) -> Any:
    return grpc.StatusCode[name] if name in grpc.StatusCode.__members__ else grpc.StatusCode.UNKNOWN


def _peer(peer: str) -> tuple[str, str] | None:
    """``ipv4:127.0.0.1:5000`` (grpc's peer) as (host, port), for the access line."""
    _, _, address = peer.partition(":")
    host, _, port = address.rpartition(":")
    return (host, port) if host else None
