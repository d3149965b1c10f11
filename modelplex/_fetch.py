"""``serve.fetch``: an object in a store, as a path on this node's disk.

Memory is the first tier (the multiplexing cache), the node's disk the second (the artifact
cache, ``_disk_cache``), the object store the third. ``fetch`` is the loader's door to the
second and third: it answers from disk when the copy there is still the store's, and
downloads once per node otherwise.
"""

from __future__ import annotations

from typing import Any, Mapping

from ._storage_config import Validate

__all__ = ["fetch"]


async def fetch(
    uri: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    validate: Validate | None = None,
    offline_ok: bool | None = None,
    deadline_s: float | None = None,
) -> str:
    """The local path of ``uri``: a file, or a directory for a prefix (a trailing ``/``, or a
    prefix that is a directory in the store).

    ``uri`` is ``s3://``, ``gs://``, ``http(s)://``, ``file://``, a plain path or any other
    installed fsspec protocol; ``storage_options`` go to the fsspec filesystem (credentials,
    ``endpoint_url``). ``validate`` ("always", or seconds a checked copy is trusted),
    ``offline_ok`` (serve the disk copy when the store is unreachable) and ``deadline_s`` (how
    long an unreachable store is retried) default to the node's ``StorageConfig``.
    Raises ``ModelNotFoundError`` (404), ``StorageAccessDeniedError`` (403),
    ``StorageUnavailableError`` (503) or ``DiskCacheFullError`` (507).
    """
    raise NotImplementedError
