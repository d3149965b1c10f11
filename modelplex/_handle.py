"""``DeploymentHandle`` and ``DeploymentResponse``: calling a deployment from Python.

A handle is a small picklable value (deployment id, method, model id). It finds its process's
router only when called, so it can travel through ``.bind()`` into another replica. The core
is async on the router's loop; ``DeploymentResponse.result()`` is the thin sync edge.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Generator

from . import _context
from ._aio import running_loop
from ._errors import RequestTimeoutError
from ._messages import DeploymentID
from ._model_ids import validate_model_id
from ._router import current_registry


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
    ) -> None:
        self._id = DeploymentID(app_name, deployment_name)
        self._method = method_name
        self._model_id = validate_model_id(multiplexed_model_id)

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
        )

    def __getattr__(self, name: str) -> "DeploymentHandle":
        if name.startswith("_"):
            raise AttributeError(name)
        return self.options(method_name=name)

    def remote(self, *args: Any, **kwargs: Any) -> DeploymentResponse:
        registry = current_registry()
        if registry is None:
            raise RuntimeError(
                "no modelplex application is running in this process; call serve.run() first"
            )
        ctx = _context.current_request()  # a call made while serving keeps the request's id
        coro = registry.router(self._id).call(
            self._method, args, kwargs, model_id=self._model_id,
            trace_id=ctx.request_id if ctx is not None else "",
        )
        if running_loop() is registry.loop:
            return DeploymentResponse(registry.loop.create_task(coro))
        return DeploymentResponse(asyncio.run_coroutine_threadsafe(coro, registry.loop))

    def __reduce__(self):
        return (_rebuild_handle, (self._id.name, self._id.app, self._method, self._model_id))

    def __repr__(self) -> str:
        return (
            f"DeploymentHandle(deployment={self._id.name!r}, app={self._id.app!r}, "
            f"method={self._method!r}, multiplexed_model_id={self._model_id!r})"
        )


def _rebuild_handle(name: str, app: str, method: str, model_id: str) -> DeploymentHandle:
    return DeploymentHandle(name, app, method_name=method, multiplexed_model_id=model_id)
