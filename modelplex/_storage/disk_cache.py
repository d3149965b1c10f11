"""The node's disk tier: artifacts fetched from object stores, shared by every replica process.

Layout of the node's directory (``StorageConfig.directory``)::

    data/<key>            the artifact: a file, or a directory for a prefix
    meta/<key>.json       its URI (no credentials), kind, size, version, when it was checked;
                          the file's mtime is the artifact's last use
    locks/<key>.lock      single flight: one process downloads, the others wait and reuse
    locks/evict.lock      one eviction at a time on the node
    tmp/<key>.*           downloads in progress; renamed into data/ once verified
    leases/<process>/     what live processes hold in memory (see ``leases``)

An artifact counts only when both its data and its meta exist: the data is renamed into place
after it is verified, the meta written (atomically) after that, and the meta removed first when
an artifact goes. A crash at any point leaves a temporary file or data without meta, and both
are removed by the next fetch of that key or the next eviction, under the key's lock.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from typing import Any, Awaitable, Callable

from filelock import FileLock, Timeout

from .._types import ArtifactStatus
from .disk_eviction import ArtifactView, plan_eviction
from .._errors import (
    DiskCacheFullError,
    ModelNotFoundError,
    StorageAccessDeniedError,
    StorageUnavailableError,
)
from .leases import Leases, held_keys
from .config import StorageConfig, Validate
from .stores import Progress, RemoteObject, Store, classify, describe

__all__ = ["DiskCache"]

logger = logging.getLogger("modelplex.storage")

_BACKOFF_FIRST_S = 0.2
_BACKOFF_MAX_S = 2.0


class _Corrupt(ConnectionError):
    """A download that does not match what the store said: retried like a dropped connection."""


def _is_enospc(exc: BaseException) -> bool:
    current: BaseException | None = exc
    for _ in range(10):
        if current is None:
            return False
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return True
        current = current.__cause__ or current.__context__
    return False


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _tree_size(path: str) -> int:
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names
    )


def _md5(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


async def _lock(lock: FileLock) -> None:
    """Take a file lock without blocking the loop (polling: cancellable, no thread parked)."""
    delay = 0.01
    while True:
        try:
            lock.acquire(timeout=0)
            return
        except Timeout:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)


class DiskCache:
    """One node's artifacts in one directory."""

    def __init__(self, config: StorageConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.directory = config.directory
        self.node_id = config.node_id or "local"
        self.leases = Leases(self.directory)
        self._clock = clock
        self._inflight: dict[tuple[int, str], asyncio.Task] = {}
        self._made = False

    # ---- paths ---------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return os.path.join(self.directory, *parts)

    def data_path(self, key: str) -> str:
        return self._path("data", key)

    def _meta_path(self, key: str) -> str:
        return self._path("meta", key + ".json")

    def _key_lock(self, key: str) -> FileLock:
        return FileLock(self._path("locks", key + ".lock"))

    def _make_dirs(self) -> None:
        if not self._made:
            for sub in ("data", "meta", "locks", "tmp", "leases"):
                os.makedirs(self._path(sub), exist_ok=True)
            self._made = True

    def _read_meta(self, key: str) -> dict[str, Any] | None:
        try:
            with open(self._meta_path(key)) as f:
                meta = json.load(f)
        except (FileNotFoundError, ValueError):
            return None
        if not os.path.exists(self.data_path(key)):
            return None
        return meta

    def _write_meta(self, key: str, meta: dict[str, Any]) -> None:
        tmp = self._path("tmp", f"{key}.meta.{uuid.uuid4().hex[:8]}")
        with open(tmp, "w") as f:
            json.dump(meta, f)
        os.replace(tmp, self._meta_path(key))

    def _touch(self, key: str) -> None:
        now = self._clock()
        try:
            os.utime(self._meta_path(key), (now, now))
        except FileNotFoundError:
            pass

    def _clean_tmp(self, key: str) -> None:
        """Under the key's lock: any temporary file of the key is a dead download's."""
        for name in os.listdir(self._path("tmp")):
            if name.startswith(key + "."):
                _remove(self._path("tmp", name))

    # ---- fetching ------------------------------------------------------------------------

    async def fetch(
        self, store: Store, *, validate: Validate, offline_ok: bool, deadline_s: float,
        model_id: str = "",
    ) -> tuple[str, str]:
        """(key, local path) of ``store``'s object, downloaded at most once per node at a time.

        Concurrent callers in this process share one task; other processes wait on the key's
        file lock and then find the artifact in place."""
        key = store.cache_key()
        loop = asyncio.get_running_loop()
        ident = (id(loop), key)
        task = self._inflight.get(ident)
        if task is None:
            task = loop.create_task(
                self._fetch_locked(store, key, validate, offline_ok, deadline_s, model_id)
            )
            self._inflight[ident] = task
            task.add_done_callback(lambda t: self._forget(ident, t))
        return key, await asyncio.shield(task)

    def _forget(self, ident: tuple[int, str], task: asyncio.Task) -> None:
        if self._inflight.get(ident) is task:
            del self._inflight[ident]
        if not task.cancelled():
            task.exception()  # seen: the waiters may all be gone

    async def _fetch_locked(
        self, store: Store, key: str, validate: Validate, offline_ok: bool, deadline_s: float,
        model_id: str,
    ) -> str:
        await asyncio.to_thread(self._make_dirs)
        lock = self._key_lock(key)
        await _lock(lock)
        try:
            return await self._fetch_held(store, key, validate, offline_ok, deadline_s, model_id)
        finally:
            lock.release()

    async def _fetch_held(
        self, store: Store, key: str, validate: Validate, offline_ok: bool, deadline_s: float,
        model_id: str,
    ) -> str:
        self._clean_tmp(key)
        path = self.data_path(key)
        meta = self._read_meta(key)
        now = self._clock()
        if meta is not None and validate != "always" and now - meta["validated_at"] <= validate:
            self._touch(key)
            return path
        try:
            obj = await self._retrying(store.stat, store, deadline_s, model_id)
        except StorageUnavailableError as exc:
            if meta is None or not offline_ok:
                raise
            logger.warning(
                "The store is unreachable (%s); serving the copy of %s checked %.0fs ago.",
                exc.detail or "no answer", store.label, now - meta["validated_at"],
            )
            self._touch(key)
            return path
        if meta is not None and meta["version"] == obj.version and meta["size"] == obj.size:
            meta["validated_at"] = now
            self._write_meta(key, meta)
            self._touch(key)
            return path
        if meta is not None:
            logger.info("%s changed in the store; downloading it again.", store.label)
        await self._download(store, key, obj, deadline_s, model_id)
        return path

    async def _retrying(
        self, op: Callable[[], Awaitable[Any]], store: Store, deadline_s: float, model_id: str
    ) -> Any:
        """``op`` until it succeeds, the store says no, or ``deadline_s`` passes."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        attempts = 0
        detail = ""
        while True:
            attempts += 1
            remaining = start + deadline_s - loop.time()
            try:
                return await asyncio.wait_for(op(), max(remaining, 0.01))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if _is_enospc(exc):
                    raise
                kind = "unavailable" if isinstance(exc, asyncio.TimeoutError) else classify(exc)
                if kind == "missing":
                    raise ModelNotFoundError(store.label, model_id) from None
                if kind == "denied":
                    raise StorageAccessDeniedError(store.label, model_id, _detail(exc)) from None
                if kind != "unavailable":
                    raise
                if not (isinstance(exc, asyncio.TimeoutError) and detail):
                    detail = _detail(exc)  # a cut-short attempt does not hide the real cause
                remaining = start + deadline_s - loop.time()
                if remaining <= 0.01:
                    raise StorageUnavailableError(
                        store.label, attempts, loop.time() - start, model_id, detail
                    ) from None
                delay = min(_BACKOFF_FIRST_S * 2 ** (attempts - 1), _BACKOFF_MAX_S, remaining)
                logger.info(
                    "The store did not answer for %s (%s); retrying in %.1fs.",
                    store.label, detail, delay,
                )
                await asyncio.sleep(delay)

    async def _download(
        self, store: Store, key: str, obj: RemoteObject, deadline_s: float, model_id: str
    ) -> None:
        budget = self.config.max_bytes
        if budget is not None and obj.size > budget:
            raise DiskCacheFullError(
                store.label, obj.size, f"larger than the whole cache budget of {budget} bytes"
            )
        await asyncio.to_thread(self.make_room, obj.size, frozenset((key,)))
        tmp = self._path("tmp", f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        for attempt in (1, 2):
            try:
                await self._retrying(
                    lambda: self._download_once(store, obj, tmp), store, deadline_s, model_id
                )
                break
            except BaseException as exc:
                await asyncio.to_thread(_remove, tmp)
                if not _is_enospc(exc):
                    raise
                if attempt == 2:
                    raise DiskCacheFullError(
                        store.label, obj.size, "no space left on the device"
                    ) from None
                logger.warning(
                    "No space left for %s (%d bytes): evicting every artifact not in use and "
                    "trying once more.", store.label, obj.size,
                )
                await asyncio.to_thread(self.make_room, obj.size, frozenset((key,)), True)
        await asyncio.to_thread(self._install, key, tmp, obj, store.label)

    async def _download_once(self, store: Store, obj: RemoteObject, tmp: str) -> None:
        await asyncio.to_thread(_remove, tmp)
        progress = Progress(store.label, self.config.progress_min_bytes)
        start = time.monotonic()
        await _copy(store, obj, tmp, progress)
        size = await asyncio.to_thread(_tree_size, tmp)
        if size != obj.size:
            raise _Corrupt(f"downloaded {size} bytes of {obj.size}")
        if obj.md5 and await asyncio.to_thread(_md5, tmp) != obj.md5:
            raise _Corrupt("the content does not match the store's ETag")
        elapsed = time.monotonic() - start
        logger.info(
            "Downloaded %s (%.1f MB) in %.2fs (%.1f MB/s).", store.label, size / 1e6, elapsed,
            size / 1e6 / max(elapsed, 1e-9),
        )

    def _install(self, key: str, tmp: str, obj: RemoteObject, label: str) -> None:
        path = self.data_path(key)
        try:
            os.unlink(self._meta_path(key))  # no longer trusted from here on
        except FileNotFoundError:
            pass
        if os.path.lexists(path):
            old = self._path("tmp", f"{key}.old.{uuid.uuid4().hex[:8]}")
            os.rename(path, old)
            _remove(old)
        os.rename(tmp, path)
        now = self._clock()
        self._write_meta(key, {
            "uri": label, "kind": obj.kind, "size": obj.size, "version": obj.version,
            "validated_at": now,
        })
        self._touch(key)

    # ---- eviction ------------------------------------------------------------------------

    def _entries(self) -> list[tuple[str, dict[str, Any], float]]:
        out = []
        try:
            names = os.listdir(self._path("meta"))
        except FileNotFoundError:
            return []
        for name in names:
            if not name.endswith(".json"):
                continue
            key = name[: -len(".json")]
            meta = self._read_meta(key)
            try:
                used = os.stat(self._meta_path(key)).st_mtime
            except FileNotFoundError:
                continue
            if meta is not None:
                out.append((key, meta, used))
        return out

    def make_room(self, incoming: int, protect: frozenset[str] = frozenset(), everything: bool = False) -> bool:
        """Evict until ``incoming`` more bytes fit the budget (or, with ``everything``, every
        artifact nobody holds); also sweep what dead downloads left. True if it fits."""
        self._make_dirs()
        with FileLock(self._path("locks", "evict.lock"), timeout=120):
            self._sweep()
            entries = self._entries()
            held = held_keys(self.directory)
            views = [ArtifactView(k, int(m["size"]), used, k in held) for k, m, used in entries]
            budget = 0 if everything else self.config.max_bytes
            plan = plan_eviction(views, max_bytes=budget, incoming=incoming, protect=protect)
            uris = {k: m["uri"] for k, m, _ in entries}
            for key in plan.victims:
                self._evict(key, uris.get(key, key))
            if not plan.fits and not everything:
                logger.warning(
                    "The artifact cache in %s is over its budget of %s bytes: the rest are held "
                    "in memory by live replicas.", self.directory, self.config.max_bytes,
                )
            return plan.fits

    def _evict(self, key: str, uri: str) -> bool:
        lock = self._key_lock(key)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False  # being fetched right now: not a victim after all
        try:
            try:
                os.unlink(self._meta_path(key))
            except FileNotFoundError:
                pass
            _remove(self.data_path(key))
            logger.info("Evicted %s from the node's disk.", uri)
            return True
        finally:
            lock.release()

    def _sweep(self) -> None:
        """Remove temporary files and data without meta whose key no process is fetching."""
        for sub in ("tmp", "data"):
            for name in os.listdir(self._path(sub)):
                key = name.split(".", 1)[0]
                if sub == "data" and os.path.exists(self._meta_path(key)):
                    continue
                lock = self._key_lock(key)
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue
                try:
                    if sub == "tmp" or not os.path.exists(self._meta_path(key)):
                        _remove(self._path(sub, name))
                finally:
                    lock.release()

    # ---- reading -------------------------------------------------------------------------

    def artifacts(self) -> list[ArtifactStatus]:
        """What is on this node's disk, least recently used first."""
        held = held_keys(self.directory)
        out = [
            ArtifactStatus(self.node_id, m["uri"], m["kind"], int(m["size"]), round(used, 3), k in held)
            for k, m, used in self._entries()
        ]
        return sorted(out, key=lambda a: (a.last_used, a.uri))


def _detail(exc: BaseException) -> str:
    return describe(exc)


async def _copy(store: Store, obj: RemoteObject, tmp: str, progress: Progress) -> None:
    """The one place bytes are written (a seam the tests use to fill the disk)."""
    await store.download(obj, tmp, progress)
