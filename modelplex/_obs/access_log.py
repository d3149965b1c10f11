"""Access lines off the request path: a request leaves its fields in a queue, a writer renders
and writes them in batches.

A ``logging`` call per request costs more than the rest of the proxy's work for a no-op
request (a ``LogRecord`` and a ``Formatter`` pass: about 15 us; a write per line and per
destination on top). So a request appends one ``AccessLine`` (a tuple, about 1 us) and the
writer, on a timer (``ACCESS_FLUSH_S``) or every ``BATCH`` lines, renders the batch once per
formatter and writes it to each destination in one write. The lines are the ones the
formatters would write: TEXT and JSON without extra attributes are rendered directly, any other
formatter (extra attributes, an application's own) gets a real ``LogRecord`` at flush time.

Order: lines leave in the order they were queued, and a destination that is about to write any
other line writes the queued access lines first (``FlushFirst``), so a file reads as if each
line had been written when it happened.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections import deque
from typing import Any, Callable, NamedTuple, Sequence

__all__ = ["ACCESS_FLUSH_S", "AccessLine", "AccessLog", "BATCH", "FlushFirst", "Site", "record"]

# Lines leave in batches, at most this long after their request.
ACCESS_FLUSH_S = 0.1
# ... or as soon as this many wait.
BATCH = 512


class Site(NamedTuple):
    """Where a line says it was logged (the logger, the file and line of the call)."""

    logger: str
    pathname: str
    lineno: int

    @property
    def filename(self) -> str:
        return os.path.basename(self.pathname)

    @classmethod
    def of(cls, logger: str, pathname: str, marker: str) -> "Site":
        """The line of ``pathname`` that begins with ``marker``: where the ``logging`` call that a
        queued line stands for is (read once, at import)."""
        try:
            with open(pathname) as f:
                lineno = next((i for i, line in enumerate(f, 1) if line.lstrip().startswith(marker)), 0)
        except OSError:
            lineno = 0
        return cls(logger, pathname, lineno)


class AccessLine(NamedTuple):
    """One request's line. The message is ``"<head> <what> <outcome> <ms>ms"``: ``GET / 200
    2.9ms`` at the proxy, ``CALL __call__ OK 1.2ms`` in a replica."""

    created: float  # time.time() when the request ended
    site: Site
    head: str  # the method, or "CALL"
    what: str  # the path, or the method called
    outcome: Any  # the status (or "-"), or OK / CANCELLED / an error status
    ms: float
    status: Any  # JSON's "status": the HTTP status (None for none), or the outcome
    client: tuple | str | None  # the peer as ASGI gives it (host, port), written "host:port"
    application: str
    deployment: str
    replica: str
    request_id: str
    route: str
    model_id: str


_EMPTY = (None, "-", "")


def _peer(client: tuple | str | None) -> str | None:
    return f"{client[0]}:{client[1]}" if isinstance(client, tuple) else client


def record(line: AccessLine) -> logging.LogRecord:
    """The ``LogRecord`` that ``logging`` would have made for ``line``."""
    site = line.site
    rec = logging.LogRecord(
        site.logger, logging.INFO, site.pathname, site.lineno, "%s %s %s %.1fms",
        (line.head, line.what, line.outcome, line.ms), None,
    )
    rec.created = line.created
    rec.msecs = int((line.created - int(line.created)) * 1000) + 0.0
    rec.relativeCreated = (line.created - logging._startTime) * 1000  # type: ignore[attr-defined]
    rec.__dict__.update(
        access=True, application=line.application, deployment=line.deployment,
        replica=line.replica, request_id=line.request_id, route=line.route,
        model_id=line.model_id, method=line.head, status=line.status,
        latency_ms=round(line.ms, 1), client=_peer(line.client),
    )
    return rec


class _Stamps:
    """``asctime`` as the formatters write it, from a per-second cache."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._second = second
        return f"{self._text},{int((created - second) * 1000):03d}"


def _text(lines: list[AccessLine], stamp: _Stamps) -> list[str]:
    """``TextFormatter``'s access lines, without a record."""
    out: list[str] = []
    append = out.append
    wheres: dict[Site, str] = {}
    for (created, site, head, what, outcome, ms, _status, _client, _application, deployment,
         replica, request_id, route, model_id) in lines:
        where = wheres.get(site)
        if where is None:
            where = wheres[site] = f"{site.filename}:{site.lineno}"
        append(f"INFO {stamp(created)} {deployment} {replica} {request_id} {route} {where} - "
               f"{head} {what} {outcome} {ms:.1f}ms model_id={model_id}")
    return out


def _json(lines: list[AccessLine], stamp: _Stamps) -> list[str]:
    """``JSONFormatter``'s lines, without a record: the same keys in the same order."""
    pid = os.getpid()
    out = []
    for (created, site, head, what, outcome, ms, status, client, application, deployment,
         replica, request_id, route, model_id) in lines:
        doc: dict[str, Any] = {"asctime": stamp(created), "levelname": "INFO"}
        for key, value in (
            ("application", application), ("deployment", deployment), ("replica", replica),
            ("request_id", request_id), ("route", route), ("model_id", model_id),
            ("method", head), ("status", status), ("latency_ms", round(ms, 1)),
            ("client", _peer(client)),
        ):
            if value not in _EMPTY:
                doc[key] = value
        doc["message"] = f"{head} {what} {outcome} {ms:.1f}ms"
        doc["filename"] = site.filename
        doc["lineno"] = site.lineno
        doc["process"] = pid
        out.append(json.dumps(doc, default=str))
    return out


Render = Callable[[list[AccessLine], _Stamps], list[str]]


_DIRECT: dict[str, Render] = {"TEXT": _text, "JSON": _json}


def _renderer(formatter: logging.Formatter | None) -> Render | None:
    """The direct renderer of modelplex's own formatters (``logging.py``: their class says
    which, as ``access_encoding``), when they add no extra attributes."""
    encoding = type(formatter).__dict__.get("access_encoding")
    if encoding is None or getattr(formatter, "_attrs", ()):
        return None
    return _DIRECT[encoding]


def _hears_info(logger: logging.Logger | None) -> bool:
    """Whether a record handed to ``logger`` would reach a handler that writes INFO."""
    while logger is not None:
        if any(h.level <= logging.INFO for h in logger.handlers):
            return True
        logger = logger.parent if logger.propagate else None
    return False


class AccessLog(logging.Handler):
    """The queue and its writer, for the ``targets`` (stream handlers: a console, a file).

    ``propagate_to`` is a logger whose handlers (an application's own) get each line as a
    record too. A ``logging.Handler`` itself only so that ``logging.shutdown`` flushes it; it
    is attached to no logger."""

    def __init__(
        self,
        targets: Sequence[logging.StreamHandler],
        *,
        propagate_to: logging.Logger | None = None,
    ) -> None:
        super().__init__()
        self.targets = list(targets)
        self.propagate_to = propagate_to
        self._queue: deque[AccessLine] = deque()
        self._armed = False
        self._writing = threading.Lock()
        self._stamps = _Stamps()

    def __len__(self) -> int:
        return len(self._queue)

    def write(self, line: AccessLine) -> None:
        """Queue one line (on the request path: no formatting, no system call)."""
        self._queue.append(line)
        if not self._armed or len(self._queue) >= BATCH:
            self._arm()

    def _arm(self) -> None:
        if len(self._queue) >= BATCH:
            self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()  # no loop to wait on: write now
            return
        self._armed = True
        loop.call_later(ACCESS_FLUSH_S, self.flush)

    def emit(self, record: logging.LogRecord) -> None:  # not attached to a logger
        pass

    def flush(self) -> None:
        """Write what is queued, in order, to every target (and the propagation's handlers)."""
        self._armed = False
        if not self._queue:
            return
        with self._writing:
            lines: list[AccessLine] = []
            queue = self._queue
            while queue:  # popleft is atomic: a line queued meanwhile waits for the next flush
                lines.append(queue.popleft())
            if not lines:
                return
            made: dict[Any, list[str]] = {}  # rendered once per way of rendering
            for target in self.targets:
                if target.level > logging.INFO:
                    continue
                formatter = target.formatter
                direct = _renderer(formatter)
                key = direct if direct is not None else id(formatter)
                rendered = made.get(key)
                if rendered is None:
                    rendered = made[key] = (
                        direct(lines, self._stamps) if direct is not None
                        else [(formatter or logging.Formatter()).format(record(l)) for l in lines]
                    )
                _write(target, rendered)
            if self.propagate_to is not None and _hears_info(self.propagate_to):
                for line in lines:
                    self.propagate_to.handle(record(line))

    def close(self) -> None:
        self.flush()
        super().close()


def _write(target: logging.StreamHandler, lines: list[str]) -> None:
    target.acquire()
    try:
        stream = target.stream
        if stream is None and isinstance(target, logging.FileHandler):
            # Closed by someone's logging.config (uvicorn's): reopen, as its emit would.
            stream = target.stream = target._open()
        if stream is not None:
            stream.write("\n".join(lines) + "\n")
            stream.flush()
    except Exception:
        pass  # a closed console at exit: nothing left to tell
    finally:
        target.release()


class FlushFirst(logging.Filter):
    """On a destination of ``log``: before it writes any other line, the queued access lines
    go out, so the destination keeps the order in which things happened."""

    def __init__(self, log: AccessLog) -> None:
        super().__init__()
        self.log = log

    def filter(self, record: logging.LogRecord) -> bool:
        if len(self.log):
            self.log.flush()
        return True
