"""The proxy's request metrics: Ray's ``modelplex_num_http_requests`` and kin."""

from __future__ import annotations

import time

from .._obs.metrics import Metrics
from .._types import ASGIApp, Receive, Scope, Send
from .asgi import StatusOf

__all__ = ["MetricsMiddleware", "ROUTE_KEY", "TIMED_KEY"]

# Where ProxyApp leaves the matched route prefix and application for this middleware.
ROUTE_KEY = "modelplex.route"
# Where this middleware leaves the request's start and the ``send`` that hears its status, so
# the access log inside (``access.logged``) times and hears the request without a second wrapper.
TIMED_KEY = "modelplex.timed"


class MetricsMiddleware:
    """Counts and times every HTTP request through the proxy app it wraps (Ray's
    ``modelplex_num_http_requests`` and kin). A request that ended without an answer (the
    client went away) counts as 499, as in Ray."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        start = time.perf_counter()
        counted = StatusOf(send)
        scope[TIMED_KEY] = (start, counted)
        try:
            await self._app(scope, receive, counted)
        finally:
            route, application = scope.get(ROUTE_KEY, ("", ""))
            self._metrics.http_request(
                route, scope.get("method", ""), application, counted.status or 499,
                time.perf_counter() - start,
            )
