"""This process's disk cache: the node's, from the storage config set once at start.

The driver sets it from the environment when modelplex starts, a replica from its spec
(``configure``); ``serve.fetch`` and management read it (``current``). A process that never
configured it (a script calling ``serve.list_artifacts()`` before ``serve.run``) reads the
environment on first use.
"""

from __future__ import annotations

import threading

from .._types import ArtifactStatus
from .config import StorageConfig
from .disk_cache import DiskCache

__all__ = ["configure", "current", "local_artifacts", "node_artifacts", "release_scope", "reset"]

_state_lock = threading.Lock()
_config: StorageConfig | None = None
_caches: dict[str, DiskCache] = {}


def configure(config: StorageConfig | None = None, *, node_id: str | None = None) -> StorageConfig:
    """Set this process's storage config (None: read the environment again); a replica on a
    backend that names nodes passes its ``node_id``."""
    global _config
    with _state_lock:
        base = config if config is not None else StorageConfig.from_env()
        _config = base.with_node(node_id) if node_id is not None else base
        return _config


def current() -> DiskCache:
    """The cache of this process's node, from the environment read once."""
    global _config
    with _state_lock:
        if _config is None:
            _config = StorageConfig.from_env()
        cache = _caches.get(_config.directory)
        if cache is None or cache.config != _config:
            cache = _caches[_config.directory] = DiskCache(_config)
        return cache


def release_scope(scope: str) -> None:
    """A model left memory: drop its leases in every cache this process used."""
    for cache in list(_caches.values()):
        cache.leases.release(scope)


def local_artifacts() -> list[ArtifactStatus]:
    """This process's node's artifacts, least recently used first."""
    return current().artifacts()


def node_artifacts() -> tuple[str, list[ArtifactStatus]]:
    """(node id, its artifacts): what a replica answers for ``serve.list_artifacts``."""
    cache = current()
    return cache.node_id, cache.artifacts()


def reset() -> None:
    """Forget the config read from the environment (the next ``current`` reads it again)."""
    global _config
    with _state_lock:
        _config = None
        _caches.clear()
