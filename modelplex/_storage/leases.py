"""Which artifacts the node's replicas hold in memory, recorded as files every process can read.

Each process that loads a model from an artifact keeps a directory ``leases/<pid>-<token>/``
with an ``alive.lock`` it holds locked for its whole life, and one empty file
``<artifact key>.<scope>`` per (model, artifact) it holds. The files go when the model is
unloaded; when the process dies the kernel drops its lock, and the next reader that can take
the lock knows the directory is stale and removes it. No pid is trusted (pids are reused).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import uuid

from filelock import FileLock, Timeout

__all__ = ["Leases", "held_keys"]


def _scope_name(scope: str) -> str:
    return hashlib.sha1(scope.encode()).hexdigest()[:16]


class Leases:
    """This process's leases in one cache directory."""

    def __init__(self, directory: str) -> None:
        self._root = os.path.join(directory, "leases")
        self._dir: str | None = None
        self._alive: FileLock | None = None
        self._held: dict[str, set[str]] = {}  # scope -> artifact keys
        self._lock = threading.Lock()

    def _own_dir(self) -> str:
        if self._dir is None or self._alive is None or not os.path.isdir(self._dir):
            name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            # Locked under a hidden name, then renamed: a reader never sees it unlocked.
            hidden = os.path.join(self._root, "." + name)
            os.makedirs(hidden, exist_ok=True)
            alive = FileLock(os.path.join(hidden, "alive.lock"))
            alive.acquire(timeout=0)
            path = os.path.join(self._root, name)
            os.rename(hidden, path)
            self._dir, self._alive = path, alive
        return self._dir

    def hold(self, scope: str, key: str) -> None:
        """``scope`` (a model in a cache) holds the artifact ``key``."""
        with self._lock:
            directory = self._own_dir()
            self._held.setdefault(scope, set()).add(key)
            open(os.path.join(directory, f"{key}.{_scope_name(scope)}"), "a").close()

    def release(self, scope: str) -> None:
        """The model is gone from memory: its artifacts are no longer held by it."""
        with self._lock:
            keys = self._held.pop(scope, set())
            if self._dir is None:
                return
            for key in keys:
                try:
                    os.unlink(os.path.join(self._dir, f"{key}.{_scope_name(scope)}"))
                except FileNotFoundError:
                    pass


def held_keys(directory: str) -> set[str]:
    """Artifact keys some live process on this node holds; removes dead processes' leases."""
    root = os.path.join(directory, "leases")
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return set()
    held: set[str] = set()
    for name in names:
        if name.startswith("."):
            continue
        path = os.path.join(root, name)
        probe = FileLock(os.path.join(path, "alive.lock"))
        try:
            probe.acquire(timeout=0)
        except Timeout:  # locked: its process is alive
            try:
                held.update(f.split(".", 1)[0] for f in os.listdir(path) if f != "alive.lock")
            except FileNotFoundError:
                pass
            continue
        except OSError:
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)  # its process died without releasing
        finally:
            probe.release()
    return held
