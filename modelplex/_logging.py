"""Replica log lines in the spirit of Ray Serve's:

    INFO 2026-11-22 01:19:03,854 default_Model default_Model#EjYmnQ CUpzhwUUNw / _cache.py:131 - Loading model '1'.

deployment, replica id, request id and route come from the process and the request context.
"""

from __future__ import annotations

import logging
import os
import sys

from . import _context

_FORMAT = (
    "%(levelname)s %(asctime)s %(deployment)s %(replica)s %(request_id)s %(route)s "
    "%(filename)s:%(lineno)d - %(message)s"
)


class _ReplicaFilter(logging.Filter):
    def __init__(self, deployment: str, replica: str) -> None:
        super().__init__()
        self._deployment = deployment
        self._replica = replica

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.current_request()
        record.deployment = self._deployment
        record.replica = self._replica
        record.request_id = (ctx.request_id or "-") if ctx else "-"
        record.route = (ctx.route or "-") if ctx else "-"
        return True


def configure_replica_logging(deployment: str, replica: str, log_dir: str) -> str:
    """Log to the console that started the replica and to a per-replica file; return its path."""
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, f"replica_{replica.replace('#', '_')}.log")
    formatter = logging.Formatter(_FORMAT)
    log_filter = _ReplicaFilter(deployment, replica)
    root = logging.getLogger()
    root.handlers.clear()
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(path)):
        handler.setFormatter(formatter)
        handler.addFilter(log_filter)
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    return path


def configure_driver_logging() -> None:
    """Give the ``modelplex`` logger a console handler unless the application set one up."""
    driver = logging.getLogger("modelplex")
    if driver.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(levelname)s %(asctime)s modelplex %(filename)s:%(lineno)d - %(message)s")
    )
    driver.addHandler(handler)
    if driver.level == logging.NOTSET:  # keep a level the application chose
        driver.setLevel(logging.INFO)
    driver.propagate = False
