"""The replica process's main: read the spec, set the process up, serve until stopped.

``python -m modelplex._replica`` (the local backend) comes here through ``__main__``; the Ray
backend calls ``run_replica`` in an actor.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import struct
import sys
import threading
from typing import Any

from .._aio import new_event_loop
from .._obs import folder as _folder
from .._obs.logging import configure_replica_logging
from .._specs import ReplicaSpec, use_sys_path
from .._storage import node as _node_storage
from . import outbox as _streams
from .replica import Replica

__all__ = ["main", "run_replica"]

logger = logging.getLogger("modelplex.replica")


def _watch_parent(stdin: Any) -> None:
    """Exit as soon as the parent goes away (its end of our stdin closes)."""
    try:
        while stdin.read(65536):
            pass
    finally:
        os._exit(0)


def _read_spec(stdin: Any) -> ReplicaSpec:
    header = stdin.read(8)
    if len(header) != 8:
        raise SystemExit("modelplex replica: no spec on stdin")
    (size,) = struct.unpack(">Q", header)
    return pickle.loads(stdin.read(size))


def run_replica(spec: ReplicaSpec) -> int:
    """Serve until stopped; the exit code says whether the replica ended cleanly.

    Shared by every backend: the local one calls it in a fresh process, the Ray one in an actor.
    """
    use_sys_path(spec.sys_path)
    configure_replica_logging(
        str(spec.deployment_id), spec.replica_id, spec.log_dir, spec.logging_config,
        spec.deployment_id.app,
    )
    _streams.install()
    # The driver's storage config (None: this process's environment); a backend with several
    # nodes per filesystem sets node_id: one disk cache per node.
    _node_storage.configure(spec.storage, node_id=spec.node_id or None)
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    found = _folder.for_process(spec.metrics, spec.node_id)

    async def run() -> None:
        await Replica(spec, found[0] if found else None).run()

    try:
        loop.run_until_complete(run())
        return 0
    except BaseException:  # the log file and the console must say why a replica died
        logger.exception("Replica %s crashed.", spec.replica_id)
        return 1
    finally:
        if found is not None:
            _folder.process_ended(found[1])
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group. The driver owns this process's
    # life (StopReplica, then its stdin closing), so leave the interrupt to it: it drains the
    # replicas and unloads their models in order instead of every replica dying at once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin = sys.stdin.buffer
    spec = _read_spec(stdin)
    threading.Thread(target=_watch_parent, args=(stdin,), name="modelplex-parent", daemon=True).start()
    os._exit(run_replica(spec))
