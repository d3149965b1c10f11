"""Log lines in the spirit of Ray Serve's, as TEXT or JSON (``LoggingConfig.encoding``).

A replica's lines name the deployment, the replica, the request id and the route:

    INFO 2026-11-22 01:19:03,854 default_Model default_Model#EjYmnQ 4c1e0f9a2b / cache.py:271 - Loading model '1'.

The proxy's access line has the same fields, the replica that served the request among them,
and the model id:

    INFO 2026-11-22 01:19:03,861 default_Model default_Model#EjYmnQ 4c1e0f9a2b / access.py:44 - GET / 200 7.9ms model_id=1

As JSON, each line is one object with Ray's keys (``levelname``, ``asctime``, ``deployment``,
``replica``, ``request_id``, ``route``, ``message``, ...), in the files and on the console
alike. The driver's own lines, outside any request, keep ``INFO <time> modelplex <file> - ...``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Iterable

from .. import _context
from .._config import LoggingConfig
from .access_log import AccessLog, FlushFirst

_PREFIX = "%(levelname)s %(asctime)s %(deployment)s %(replica)s %(request_id)s %(route)s "
_DRIVER_PREFIX = "%(levelname)s %(asctime)s modelplex "
_WHERE = "%(filename)s:%(lineno)d"
_MESSAGE = " - %(message)s"

# Context fields, in the order JSON lines list them; "-" or empty means absent.
_CONTEXT = ("application", "deployment", "replica", "request_id", "route", "model_id")
_ACCESS = ("method", "status", "latency_ms", "client")


class _Formatter(logging.Formatter):
    """``asctime`` from a per-second cache: ``time.strftime`` per line is most of a line's cost
    when every request writes one (the access log)."""

    _second = -1
    _stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"


class TextFormatter(logging.Formatter):
    """Lines with a request context as ``_PREFIX``, access lines with the model id after the
    message, the driver's own lines as ``_DRIVER_PREFIX``; extra attributes before the message."""

    access_encoding = "TEXT"  # access_log.py writes its lines directly, the same

    def __init__(self, attrs: Iterable[str] = ()) -> None:
        super().__init__()
        self._attrs = tuple(attrs)
        where = _WHERE + "".join(f" %({a})s" for a in self._attrs)
        self._plain = _Formatter(_DRIVER_PREFIX + where + _MESSAGE)
        self._context = _Formatter(_PREFIX + where + _MESSAGE)
        self._access = _Formatter(_PREFIX + where + _MESSAGE + " model_id=%(model_id)s")

    def format(self, record: logging.LogRecord) -> str:
        for attr in self._attrs:  # taskName, say, is not on every Python's records
            if not hasattr(record, attr):
                setattr(record, attr, None)
        if getattr(record, "access", False):
            return self._access.format(record)
        if hasattr(record, "replica"):
            return self._context.format(record)
        return self._plain.format(record)


class JSONFormatter(logging.Formatter):
    """One JSON object per line; a traceback goes in ``exc_text``, never on lines of its own."""

    access_encoding = "JSON"  # access_log.py writes its lines directly, the same

    def __init__(self, attrs: Iterable[str] = ()) -> None:
        super().__init__()
        self._attrs = tuple(attrs)

    def format(self, record: logging.LogRecord) -> str:
        out = {"asctime": self.formatTime(record), "levelname": record.levelname}
        for key in _CONTEXT + _ACCESS:
            value = getattr(record, key, None)
            if value is not None and value != "-" and value != "":
                out[key] = value
        out["message"] = record.getMessage()
        out["filename"] = record.filename
        out["lineno"] = record.lineno
        out["process"] = record.process
        for attr in self._attrs:
            out[attr] = getattr(record, attr, None)
        if record.exc_info:
            out["exc_text"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_text"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


def make_formatter(config: LoggingConfig) -> logging.Formatter:
    attrs = config.additional_log_standard_attrs
    return JSONFormatter(attrs) if config.encoding == "JSON" else TextFormatter(attrs)


class _ReplicaFilter(logging.Filter):
    def __init__(self, application: str, deployment: str, replica: str) -> None:
        super().__init__()
        self._application = application
        self._deployment = deployment
        self._replica = replica

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.current_request()
        record.application = self._application
        record.deployment = self._deployment
        record.replica = self._replica
        record.request_id = (ctx.request_id or "-") if ctx else "-"
        record.route = (ctx.route or "-") if ctx else "-"
        if not hasattr(record, "model_id"):
            record.model_id = (ctx.model_id or "-") if ctx else "-"
        return True


_identity = ("", "-", "-")  # application, deployment, replica: what a replica's lines name


def replica_identity() -> tuple[str, str, str]:
    """(application, deployment, replica) as this replica's lines name them."""
    return _identity


def configure_replica_logging(
    deployment: str,
    replica: str,
    log_dir: str,
    config: LoggingConfig = LoggingConfig(),
    application: str = "",
) -> str:
    """Log to the console that started the replica and to a per-replica file; return its path."""
    global _identity
    _identity = (application, deployment, replica)
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, f"replica_{replica.replace('#', '_')}.log")
    formatter = make_formatter(config)
    log_filter = _ReplicaFilter(application, deployment, replica)
    root = logging.getLogger()
    root.handlers.clear()
    handlers = [logging.StreamHandler(sys.stderr), logging.FileHandler(path)]
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(log_filter)
        root.addHandler(handler)
    root.setLevel(config.log_level)
    _install_access_log(AccessLog(handlers))  # handle calls' access lines (execution.py)
    return path


# ---- the driver ----------------------------------------------------------------------------------

_console: logging.Handler | None = None  # the driver's console handler, when modelplex made it
_proxy_file: logging.Handler | None = None
_access: AccessLog | None = None  # where this process's access lines go (proxy or replica)


def access_log() -> AccessLog | None:
    """This process's access-line writer (``access_log.py``), once logging is configured."""
    return _access


def _install_access_log(log: AccessLog | None) -> None:
    """Make ``log`` this process's writer: the old one flushes first, and each destination
    writes the queued access lines before any other line (``FlushFirst``)."""
    global _access
    old, _access = _access, log
    if old is not None:
        old.flush()
        for target in old.targets:
            for f in [f for f in target.filters if isinstance(f, FlushFirst) and f.log is old]:
                target.removeFilter(f)
        old.close()
    if log is not None:
        for target in log.targets:
            target.addFilter(FlushFirst(log))


def _batch_access_lines() -> None:
    """The proxy's access lines go to the console modelplex made and to the proxy's file;
    under an application's own handlers they also reach those, as records."""
    access = logging.getLogger("modelplex.access")
    access.propagate = _console is None
    targets = [t for t in (_console, _proxy_file) if isinstance(t, logging.StreamHandler)]
    _install_access_log(AccessLog(targets, propagate_to=access.parent if access.propagate else None))


def configure_driver_logging() -> None:
    """Give the ``modelplex`` logger a console handler unless the application set one up."""
    global _console
    driver = logging.getLogger("modelplex")
    if driver.handlers:
        return
    _console = logging.StreamHandler(sys.stderr)
    _console.setFormatter(TextFormatter())
    driver.addHandler(_console)
    if driver.level == logging.NOTSET:  # keep a level the application chose
        driver.setLevel(logging.INFO)
    driver.propagate = False


def configure_proxy_logging(log_dir: str, config: LoggingConfig = LoggingConfig()) -> str:
    """The driver's proxy writes its lines (the access log among them) to ``proxy.log`` in the
    run's folder, next to the replicas' files; return its path."""
    global _proxy_file
    close_proxy_logging()
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, "proxy.log")
    _proxy_file = logging.FileHandler(path)
    _proxy_file.setFormatter(make_formatter(config))
    logging.getLogger("modelplex.proxy").addHandler(_proxy_file)
    _batch_access_lines()
    return path


def apply_driver_logging(config: LoggingConfig) -> None:
    """The top-level ``logging_config`` on the driver: its level, and its encoding for the
    console (when modelplex made the handler) and the proxy's file."""
    logging.getLogger("modelplex").setLevel(config.log_level)
    for handler in (_console, _proxy_file):
        if handler is not None:
            handler.setFormatter(make_formatter(config))


def close_proxy_logging() -> None:
    global _proxy_file
    if _proxy_file is None:
        return
    file, _proxy_file = _proxy_file, None
    _batch_access_lines()  # flushes what waits for the file, and writes to the console only
    logging.getLogger("modelplex.proxy").removeHandler(file)
    file.close()
