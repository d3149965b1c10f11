"""``serve.fetch``: an object in a store, as a path on this node's disk.

Memory is the first tier (the multiplexing cache), the node's disk the second (the artifact
cache, ``_storage``), the object store the third. ``fetch`` is the loader's door to the
second and third: it answers from disk when the copy there is still the store's, and
downloads once per node otherwise. Inside a loader it also records that the model being loaded
holds the artifact, so the disk tier does not evict what memory still uses.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, Mapping

from .. import _context
from .._storage import node as _node_storage
from .._aio import running_loop
from .._storage.config import Validate, check_validate
from .._storage.stores import Store

__all__ = ["Warmed", "fetch"]


class Warmed(BaseException):
    """Raised by ``fetch`` in a disk-only preload once the artifact is on disk, to stop the
    loader before it loads anything into memory. A BaseException, so a loader's own
    ``except Exception`` does not swallow it."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def fetch(
    uri: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    validate: Validate | None = None,
    offline_ok: bool | None = None,
    deadline_s: float | None = None,
) -> Any:
    """The local path of ``uri``: a file, or a directory for a prefix (a trailing ``/``, or a
    prefix that is a directory in the store). Await it in async code; in sync code (a sync
    loader, a script) it returns the path.

    ``uri`` is ``s3://``, ``gs://``, ``http(s)://``, ``file://``, a plain path or any other
    installed fsspec protocol; ``storage_options`` go to the fsspec filesystem (credentials,
    ``endpoint_url``). ``validate`` ("always", or seconds a checked copy is trusted),
    ``offline_ok`` (serve the disk copy when the store is unreachable) and ``deadline_s`` (how
    long an unreachable store is retried) default to the node's settings (docs/storage.md).
    Raises ``ModelNotFoundError`` (404), ``StorageAccessDeniedError`` (403),
    ``StorageUnavailableError`` (503) or ``DiskCacheFullError`` (507).
    """
    if not isinstance(uri, str) or not uri:
        raise TypeError(f"uri must be a non-empty string, got {uri!r}")
    if storage_options is not None and not isinstance(storage_options, Mapping):
        raise TypeError(f"storage_options must be a mapping, got {storage_options!r}")
    if validate is not None:
        validate = check_validate(validate)
    if offline_ok is not None and not isinstance(offline_ok, bool):
        raise TypeError(f"offline_ok must be a bool, got {offline_ok!r}")
    if deadline_s is not None and (
        isinstance(deadline_s, bool) or not isinstance(deadline_s, (int, float))
        or not 0 <= deadline_s < math.inf
    ):
        raise ValueError(f"deadline_s must be a finite number >= 0, got {deadline_s!r}")
    store = Store(uri, storage_options)  # an unknown protocol fails here, naming it
    coro = _fetch(store, validate, offline_ok, deadline_s, _context.current_load())
    if running_loop() is not None:
        return coro
    # A worker thread or a script: a loop of its own, the same disk cache. The filesystems
    # opened on that loop are closed as it ends (see ``_storage/stores.py``'s ``Filesystems``).
    return asyncio.run(coro)


async def _fetch(
    store: Store,
    validate: Validate | None,
    offline_ok: bool | None,
    deadline_s: float | None,
    scope: _context.LoadScope | None,
) -> str:
    cache = _node_storage.current()
    config = cache.config
    key, path = await cache.fetch(
        store,
        validate=config.validate if validate is None else validate,
        offline_ok=config.offline_ok if offline_ok is None else offline_ok,
        deadline_s=config.deadline_s if deadline_s is None else deadline_s,
        model_id=scope.model_id if scope is not None else "",
    )
    if scope is not None:
        if scope.disk_only:
            raise Warmed(path)
        cache.leases.hold(scope.scope, key)
    return path


