"""``DeploymentHandle`` and ``DeploymentResponse``: calling a deployment from Python.

A handle is a small picklable value (deployment id, method, model id). It finds its process's
router only when called, so it can travel through ``.bind()`` into another replica. The core
is async on the router's loop; ``DeploymentResponse.result()`` is the thin sync edge.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from typing import Any, Generator

from .. import _context
from .._aio import running_loop
from .._errors import RequestTimeoutError
from .._messages import DeploymentID
from .._model_ids import validate_model_id
from .._data.routers import current_registry
from .._data.replies import ReplyStream


class DeploymentResponse:
    """The pending result of ``handle.remote(...)``: ``await`` it, or call ``.result()``."""

    def __init__(self, future: "asyncio.Future[Any] | concurrent.futures.Future[Any]") -> None:
        self._future = future

    def __await__(self) -> Generator[Any, None, Any]:
        future = self._future
        if isinstance(future, concurrent.futures.Future):
            return asyncio.wrap_future(future).__await__()
        return future.__await__()

    def result(self, timeout_s: float | None = None) -> Any:
        """Block until the result is ready. Not for use inside an event loop: ``await`` there."""
        future = self._future
        if not isinstance(future, concurrent.futures.Future):
            raise RuntimeError("DeploymentResponse.result() blocks; use `await response` here")
        if running_loop() is not None and _on_router_loop():
            raise RuntimeError("DeploymentResponse.result() would deadlock here; use await")
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            raise RequestTimeoutError(timeout_s) from None

    def cancel(self) -> bool:
        return self._future.cancel()

    def done(self) -> bool:
        return self._future.done()


class DeploymentResponseGenerator:
    """The streamed result of ``handle.options(stream=True).remote(...)``: iterate it with
    ``async for`` inside a deployment (or any event loop), with ``for`` outside one.

    Items arrive as the remote generator yields them; an error it raises comes after the items
    before it. ``cancel()``, or dropping the generator before its end, stops the remote
    generator (its ``finally`` blocks run)."""

    def __init__(
        self,
        future: "asyncio.Future[ReplyStream] | concurrent.futures.Future[ReplyStream]",
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._future = future
        self._loop = loop  # the router's: the stream lives there
        self._stream: ReplyStream | None = None
        self._buffer: collections.deque[Any] = collections.deque()
        self._done = False

    # -- async --

    def __aiter__(self) -> "DeploymentResponseGenerator":
        return self

    async def __anext__(self) -> Any:
        if self._buffer:
            return self._buffer.popleft()
        if self._done:
            raise StopAsyncIteration
        if running_loop() is self._loop:
            batch = await self._next_batch()
        else:
            batch = await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(self._next_batch(), self._loop)
            )
        if not batch:
            raise StopAsyncIteration
        self._buffer.extend(batch)
        return self._buffer.popleft()

    # -- sync --

    def __iter__(self) -> "DeploymentResponseGenerator":
        return self

    def __next__(self) -> Any:
        if self._buffer:
            return self._buffer.popleft()
        if self._done:
            raise StopIteration
        if running_loop() is not None:
            raise RuntimeError(
                "A DeploymentResponseGenerator cannot be iterated with `for` inside an event "
                "loop (it would block the loop); use `async for` here."
            )
        batch = asyncio.run_coroutine_threadsafe(self._next_batch(), self._loop).result()
        if not batch:
            raise StopIteration
        self._buffer.extend(batch)
        return self._buffer.popleft()

    # -- both, on the router's loop --

    async def _next_batch(self) -> list[Any]:
        try:
            if self._stream is None:
                future = self._future
                if isinstance(future, concurrent.futures.Future):
                    future = asyncio.wrap_future(future)
                self._stream = await future
            batch = await self._stream.next_batch()
        except BaseException:
            self._done = True
            raise
        if not batch:
            self._done = True
        return batch

    def cancel(self) -> None:
        """Stop the stream: the remote generator is closed, and iterating raises
        ``asyncio.CancelledError``."""
        self._loop.call_soon_threadsafe(self._close)

    def _close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        elif not self._future.done():
            self._future.cancel()
        else:
            try:
                self._future.result().close()
            except BaseException:
                pass

    def __del__(self) -> None:
        # Dropped before its end: the replica would otherwise wait for credit for ever.
        if not self._done and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._close)
            except RuntimeError:  # the loop closed meanwhile
                pass


def _on_router_loop() -> bool:
    registry = current_registry()
    return registry is not None and running_loop() is registry.loop


class DeploymentHandle:
    """Calls one deployment. ``handle.options(...)`` returns a new handle; handles are cheap."""

    def __init__(
        self,
        deployment_name: str,
        app_name: str = "default",
        *,
        method_name: str = "__call__",
        multiplexed_model_id: str = "",
        stream: bool = False,
    ) -> None:
        self._id = DeploymentID(app_name, deployment_name)
        self._method = method_name
        self._model_id = validate_model_id(multiplexed_model_id)
        if not isinstance(stream, bool):
            raise TypeError(f"stream must be True or False, got {stream!r}")
        self._stream = stream

    @property
    def deployment_name(self) -> str:
        return self._id.name

    @property
    def app_name(self) -> str:
        return self._id.app

    @property
    def deployment_id(self) -> DeploymentID:
        return self._id

    def options(
        self,
        *,
        method_name: str | None = None,
        multiplexed_model_id: str | None = None,
        stream: bool | None = None,
        **unsupported: Any,
    ) -> "DeploymentHandle":
        if unsupported:
            raise TypeError(f"unknown handle option(s): {', '.join(sorted(unsupported))}")
        if method_name is not None and (not isinstance(method_name, str) or not method_name):
            raise ValueError(f"method_name must be a non-empty string, got {method_name!r}")
        return DeploymentHandle(
            self._id.name,
            self._id.app,
            method_name=self._method if method_name is None else method_name,
            multiplexed_model_id=(
                self._model_id if multiplexed_model_id is None else multiplexed_model_id
            ),
            stream=self._stream if stream is None else stream,
        )

    def __getattr__(self, name: str) -> "DeploymentHandle":
        if name.startswith("_"):
            raise AttributeError(name)
        return self.options(method_name=name)

    def remote(self, *args: Any, **kwargs: Any) -> "DeploymentResponse | DeploymentResponseGenerator":
        registry = current_registry()
        if registry is None:
            raise RuntimeError(
                "no modelplex application is running in this process; call serve.run() first"
            )
        ctx = _context.current_request()  # a call made while serving keeps the request's id
        coro = registry.router(self._id).call(
            self._method, args, kwargs, model_id=self._model_id,
            trace_id=ctx.request_id if ctx is not None else "", stream=self._stream,
        )
        if running_loop() is registry.loop:
            future: Any = registry.loop.create_task(coro)
        else:
            future = asyncio.run_coroutine_threadsafe(coro, registry.loop)
        if self._stream:
            return DeploymentResponseGenerator(future, registry.loop)
        return DeploymentResponse(future)

    def __reduce__(self):
        return (
            _rebuild_handle,
            (self._id.name, self._id.app, self._method, self._model_id, self._stream),
        )

    def __repr__(self) -> str:
        return (
            f"DeploymentHandle(deployment={self._id.name!r}, app={self._id.app!r}, "
            f"method={self._method!r}, multiplexed_model_id={self._model_id!r}"
            f"{', stream=True' if self._stream else ''})"
        )


def _rebuild_handle(
    name: str, app: str, method: str, model_id: str, stream: bool = False
) -> DeploymentHandle:
    return DeploymentHandle(
        name, app, method_name=method, multiplexed_model_id=model_id, stream=stream
    )
