"""Request execution: one router's ``Call`` run against the deployment's instance, answered.

A handle's call returns the method's value, or streams its generator's items; an HTTP request
is rendered whole, or streamed through the request's outbox (and an ``@serve.ingress`` app
answers it itself); a management call goes to the admin. Whatever the method raises reaches
the caller as itself when it survives a round trip, else as a ``RemoteError``; a client's
error is one log line, anything else its traceback, once.

Everything here runs on the replica's user loop; the replica counts and cancels the tasks.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import pickle
import time
import traceback
from typing import Any, Protocol

import cloudpickle
from starlette.exceptions import HTTPException

from .. import _context
from .._errors import (
    MethodNotFoundError,
    RemoteError,
    UnserializableResultError,
    error_response,
    http_status_for,
)
from .._http.conversions import render, to_starlette
from .._messages import Call, Credit, HTTPResult, Result
from .._obs.access_log import AccessLine, Site
from .._obs.logging import access_log, replica_identity
from . import grpc_calls
from . import outbox as _streams
from .admin import Admin
from .failures import was_logged
from .outbox import Outboxes, RequestKey, Sender
from .sockets import SocketInbox

__all__ = ["Executor", "failure", "run_user"]

logger = logging.getLogger("modelplex.replica")


class RequestRecorder(Protocol):
    """What execution tells the replica's metrics of each request."""

    def request(self, route: str, seconds: float, error: str | None) -> None: ...


class Executor:
    """Runs the requests of one replica against its instance."""

    def __init__(
        self,
        instance: Any,
        admin: Admin,
        *,
        deployment: str,  # the deployment's name, as errors name it
        recorder: RequestRecorder,
        outboxes: Outboxes,
        ingress: bool = False,  # an @serve.ingress app answers HTTP requests
        access_log: bool = False,
    ) -> None:
        self._instance = instance
        self._admin = admin
        self._deployment = deployment
        self._recorder = recorder
        self._outboxes = outboxes
        self._ingress = ingress
        self._access_log = access_log
        # Open WebSockets' client messages, by request (the replica hands them SocketIn).
        self.inboxes: dict[RequestKey, SocketInbox] = {}

    async def execute(self, conn: Sender, key: RequestKey, call: Call) -> Result | None:
        """The request's ``Result``, or None when its outbox answered it already."""
        ctx = _context.RequestContext(
            request_id=call.trace_id or str(call.request_id),
            model_id=call.model_id,
            route=call.http.scope.get("path", "") if call.http is not None else "",
        )
        token = _context.set_request(ctx)
        started = time.perf_counter()
        outcome = "CANCELLED"  # unless it returns or raises
        error: str | None = "CancelledError"  # for the metrics, unless it returns
        try:
            if self._admin.handles(call.method):
                args = pickle.loads(call.payload)[0] if call.payload else ()
                value = await self._admin.run(call.method, args)
                outcome, error = "OK", None
                return self._success(call, value)
            if call.grpc is not None:
                result = await self._serve_grpc(conn, key, call)
            elif call.http is not None and call.http.scope.get("type") == "websocket":
                result = await self._serve_socket(conn, key, call)
            elif call.http is not None:
                result = await self._serve_http(conn, key, call)
            else:
                result = await self._invoke(conn, key, call)
            outcome, error = "OK", None
            return result
        except HTTPException as exc:
            outcome, error = str(exc.status_code), type(exc).__name__
            outbox = self._outboxes.get(key)
            if call.http is None or (outbox is not None and outbox.started):
                return failure(call.request_id, exc, traceback.format_exc())
            return self._success(call, HTTPResult(*error_response(exc)))
        except UnserializableResultError as exc:  # its message says it all; logged here alone
            logger.error("Request failed: %s", exc)
            return failure(call.request_id, exc)
        except Exception as exc:
            outcome, error = str(_log_failure(exc)), type(exc).__name__
            return failure(call.request_id, exc, traceback.format_exc())
        finally:
            if (self._access_log and call.http is None and call.grpc is None
                    and not self._admin.handles(call.method)):
                # A handle call's access line; HTTP and gRPC requests have theirs at the proxy.
                _log_call(call.method, outcome, (time.perf_counter() - started) * 1000, ctx)
            ctx.release_all()
            _context.reset_request(token)
            route = (call.http.scope.get("root_path") or "/") if call.http is not None else ""
            self._recorder.request(route, time.perf_counter() - started, error)

    def _method(self, name: str) -> Any:
        method = getattr(self._instance, name, None)
        if method is None or not callable(method):
            raise MethodNotFoundError(self._deployment, name)
        return method

    async def _invoke(self, conn: Sender, key: RequestKey, call: Call) -> Result:
        """A handle's call: the method's value, or its generator's items streamed (Ray's rules:
        ``stream=True`` needs a generator, and a generator needs ``stream=True``)."""
        method = self._method(call.method)
        args, kwargs = pickle.loads(call.payload) if call.payload else ((), {})
        value = await run_user(method, args, kwargs)
        if call.stream:
            if not _streams.is_generator(value):
                raise TypeError(
                    f"Called method '{call.method}' with `handle.options(stream=True)` but it "
                    f"did not return a generator."
                )
            await _streams.pump(value, self._outboxes.open(conn, key).put)
            return Result(call.request_id, True, _streams.NONE)
        if _streams.is_generator(value):
            await _streams.close(value)
            raise TypeError(
                f"Method '{call.method}' returned a generator. You must use "
                f"`handle.options(stream=True)` to call generators on a deployment."
            )
        return self._success(call, value)

    async def _serve_grpc(self, conn: Sender, key: RequestKey, call: Call) -> Result:
        """A call through the gRPC proxy: the RPC's method with the request message (and its
        ``grpc_context``), its response serialized here; streamed for a server-streaming RPC."""
        assert call.grpc is not None  # the caller's branch; not a config check
        method = self._method(call.method)
        args, kwargs = pickle.loads(call.payload) if call.payload else ((), {})
        context = grpc_calls.RayServegRPCContext(call.grpc)
        kwargs = {**kwargs, **grpc_calls.grpc_kwargs(method, context)}
        try:
            value = await run_user(method, args, kwargs)
            if call.stream:
                if not _streams.is_generator(value):
                    raise TypeError(
                        f"gRPC method {call.method!r} is server-streaming: it must be a generator"
                    )
                put = self._outboxes.open(conn, key).put
                await grpc_calls.streamed(call, value, put, _streams.pump)
                return self._success(call, context.reply(b""))
            if _streams.is_generator(value):
                await _streams.close(value)
                raise TypeError(
                    f"gRPC method {call.method!r} is unary: it returned a generator; declare "
                    f"the RPC with a `stream` response to stream"
                )
            return self._success(call, context.reply(grpc_calls.serialize(call, value)))
        except Exception as exc:
            reply = grpc_calls.user_status_failure(exc, context)
            if reply is None:
                raise
            return self._success(call, reply)

    async def _serve_socket(self, conn: Sender, key: RequestKey, call: Call) -> Result:
        """A WebSocket, for as long as the app's handler runs: what the app sends streams to
        the proxy through the outbox; what the client sends arrives in the inbox."""
        assert call.http is not None  # the caller's branch; not a config check
        if not self._ingress:
            raise TypeError(
                f"deployment {self._deployment!r} serves WebSockets only through an "
                f"@serve.ingress app (a FastAPI or Starlette @app.websocket route)"
            )

        def credit(n: int) -> None:
            if not conn.closed:
                conn.send_nowait(Credit(call.request_id, n))

        inbox = self.inboxes[key] = SocketInbox(credit)
        outbox = self._outboxes.open(conn, key)

        async def send(message: Any) -> None:
            if inbox.disconnected:  # as an ASGI server says it: Starlette raises WebSocketDisconnect
                raise OSError("the WebSocket's client has gone away")
            await outbox.put(dict(message))

        scope = dict(call.http.scope)
        scope["headers"] = list(scope.get("headers", ()))
        try:
            await self._instance.__modelplex_asgi__(scope, inbox.receive, send)
        finally:
            self.inboxes.pop(key, None)
        return Result(call.request_id, True, _streams.NONE)

    async def _serve_http(self, conn: Sender, key: RequestKey, call: Call) -> Result | None:
        """An HTTP request: a whole response is one Result; a streamed one goes out through the
        outbox as it is produced (and ``None`` here: it was answered as it ended)."""
        assert call.http is not None  # the caller's branch; not a config check
        request = to_starlette(call.http)
        if not self._ingress:
            value = await run_user(self._method(call.method), (request,), {})
            streams = _streams.streams_over_http(value)
            if not streams and getattr(value, "background", None) is None:
                return self._success(call, await render(value))  # the fast path
        outbox = self._outboxes.open(conn, key)
        sink = _streams.HTTPSink(
            outbox, lambda whole: outbox.answer(self._success(call, whole))
        )
        if self._ingress:  # @serve.ingress: the app answers, streaming or not
            await self._instance.__modelplex_asgi__(request.scope, request.receive, sink.send)
        elif streams:
            await _streams.stream_http(value, sink)
        else:  # a Response with background tasks: answered before they run, as uvicorn does
            await value(request.scope, request.receive, sink.send)
        if not sink.complete:
            if sink.streaming:  # the app returned mid-body: end the stream where it is
                outbox.answer(Result(call.request_id, True, _streams.NONE))
            else:
                raise RuntimeError("the ASGI app returned without completing its response")
        return None

    def _success(self, call: Call, value: Any) -> Result:
        try:
            return Result(call.request_id, True, _streams.dumps(value))
        except Exception as exc:
            error = UnserializableResultError(
                f"the return value of {self._deployment}.{call.method}, of type "
                f"{type(value).__qualname__}, cannot be serialized: {exc}"
            )
            logger.error("%s", error)
            return failure(call.request_id, error)


def _log_call(method: str, outcome: str, ms: float, ctx: _context.RequestContext) -> None:
    if not logger.isEnabledFor(logging.INFO):
        return
    writer = access_log()
    if writer is None:  # outside a replica process (tests): logged as is
        logger.info(  # the call a queued line names
            "CALL %s %s %.1fms", method, outcome, ms,
            extra={"access": True, "method": "CALL", "status": outcome, "latency_ms": round(ms, 1)},
        )
        return
    application, deployment, replica = replica_identity()
    writer.write(AccessLine(
        time.time(), _CALL_SITE, "CALL", method, outcome, ms, outcome, None, application,
        deployment, replica, ctx.request_id or "-", ctx.route or "-", ctx.model_id or "-",
    ))



_CALL_SITE = Site.of("modelplex.replica", __file__, "logger.info(  # the call")


def _log_failure(exc: Exception) -> int:
    """A client's error (4xx) is one WARNING line, without a traceback: a misconfigured client
    must not flood the logs. Anything else is an ERROR with its traceback, once: the requests
    a failed load fails get one line each. Returns the status."""
    status = http_status_for(exc)
    if 400 <= status < 500:
        first = str(exc).strip().splitlines()[:1]
        logger.warning("Request failed (%d): %s", status, ": ".join([type(exc).__name__, *first]))
    elif was_logged(exc):  # a failed load, logged with its traceback
        logger.error("Request failed: %s: %s (see the load's traceback above)",
                     type(exc).__name__, exc)
    else:
        logger.exception("Request failed: %s: %s", type(exc).__name__, exc)
    return status


def failure(request_id: int, exc: BaseException, tb: str = "") -> Result:
    """Send the exception as itself if it survives a round trip, else as a RemoteError."""
    try:
        payload = cloudpickle.dumps(exc, protocol=5)
        pickle.loads(payload)
    except Exception:
        payload = cloudpickle.dumps(RemoteError(type(exc).__qualname__, str(exc), tb))
    return Result(request_id, False, payload, tb)


async def run_user(method: Any, args: tuple, kwargs: dict) -> Any:
    """Call a method of the user's: async ones on the user loop, sync ones in a thread (so they
    may block), generator functions directly (making the generator runs none of its code).
    Requests' methods and the lifecycle ones (``reconfigure``, ``check_health``) alike."""
    if (inspect.iscoroutinefunction(method)
            or inspect.iscoroutinefunction(getattr(method, "__call__", None))):
        value = await method(*args, **kwargs)
    elif inspect.isasyncgenfunction(method) or inspect.isgeneratorfunction(method):
        value = method(*args, **kwargs)
    else:
        value = await asyncio.to_thread(method, *args, **kwargs)
    if inspect.isawaitable(value):
        value = await value
    return value
