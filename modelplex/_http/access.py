"""The proxy's access log: one INFO line per request on ``modelplex.access``.

``logged`` runs a request with an ``Access`` record that the proxy app fills in as it learns
the application, deployment, model and replica, and queues the line when the request ends;
the process's writer (``_obs/access_log.py``) renders and writes it off the request path.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Awaitable, Callable

from .._obs.access_log import AccessLine, Site
from .._obs.logging import access_log
from .._types import Receive, Scope, Send
from .asgi import StatusOf, client
from .metrics import TIMED_KEY

access_logger = logging.getLogger("modelplex.access")
# A queued line names the file and line that a line logged directly would: the call below.
_SITE = Site.of("modelplex.access", __file__, "access_logger.info(  #")

# Request ids only tie log lines together; they need not be secret, so no system call per request.
_ids = random.Random()


def trace_id() -> str:
    return "%010x" % _ids.getrandbits(40)


class Access:
    """One request's access line; the proxy app fills in what it learns on the way."""

    __slots__ = ("request_id", "application", "deployment", "replica", "model_id", "quiet")

    def __init__(self) -> None:
        self.request_id = trace_id()  # the replica's lines show the same id
        self.application = self.deployment = self.replica = "-"
        self.model_id = ""
        self.quiet = False  # the ingress deployment's logging_config turned its access log off

    def served_by(self, replica_id: str) -> None:
        self.replica = replica_id

    def log(self, scope: Scope, status: int, seconds: float) -> None:
        if not access_logger.isEnabledFor(logging.INFO):
            return
        ms = seconds * 1000
        method, path = scope["method"], scope["path"]
        writer = access_log()
        if writer is not None:  # queued: rendered and written off the request path
            writer.write(AccessLine(
                time.time(), _SITE, method, path, status or "-", ms, status or None,
                scope.get("client") or "?", self.application, self.deployment, self.replica,
                self.request_id, path, self.model_id or "-",
            ))
            return
        access_logger.info(  # no writer in this process (an app served in a test): as is
            "%s %s %s %.1fms", method, path, status or "-", ms,
            extra={
                "access": True, "application": self.application, "deployment": self.deployment,
                "replica": self.replica, "request_id": self.request_id, "route": path,
                "model_id": self.model_id or "-", "method": method, "status": status or None,
                "latency_ms": round(ms, 1), "client": client(scope),
            },
        )


Served = Callable[[Scope, Receive, Send, "Access | None"], Awaitable[None]]


async def logged(serve: Served, scope: Scope, receive: Receive, send: Send) -> None:
    """Run ``serve`` for one HTTP request and write its access line when it ends, whatever
    the way (an answer, an error, a client gone away: no status, "-")."""
    timed = scope.get(TIMED_KEY)  # the metrics middleware's, around this app
    if timed is None:
        start, status = time.perf_counter(), StatusOf(send)
    else:
        start, status = timed  # ``send`` is that ``status``
    access = Access()
    try:
        await serve(scope, receive, status, access)
    finally:
        if not access.quiet:
            access.log(scope, status.status, time.perf_counter() - start)
