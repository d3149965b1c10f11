"""The boundary with object stores: fsspec in, modelplex's errors out.

Everything that touches fsspec lives here: opening a filesystem for a URI, asking what an
object is now (size and version), copying it to a local path, and translating what the
store said into ``ModelNotFoundError``/``StorageAccessDeniedError``/``StorageUnavailableError``.
Async filesystems (s3fs, gcsfs, HTTP) run on the caller's loop; the others in a thread, so a
download never blocks a replica's user loop.

Filesystems are kept open, one per (protocol, storage options) per event loop, because building
one is the expensive part of a check: s3fs's client loads botocore's service model and an SSL
context, 100-200 ms, against a few ms for the HEAD it is built to send.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import json
import logging
import os
import posixpath
import re
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

import fsspec
from fsspec.callbacks import Callback

__all__ = [
    "Filesystems", "Progress", "RemoteObject", "Store", "classify", "close_filesystems", "describe",
    "filesystems", "redact", "redact_text",
]

logger = logging.getLogger("modelplex.storage")


def redact(uri: str) -> str:
    """``uri`` without what may be a secret: userinfo, query string and fragment."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>,()]+")


def redact_text(text: str) -> str:
    """A lower library's message with every URL in it redacted."""
    return _URL.sub(lambda m: redact(m.group(0)), text)


# Type names (anywhere in an exception's MRO) that mean "the store did not answer": botocore's
# and aiohttp's, without importing either.
_TRANSIENT_NAMES = frozenset({
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ClientConnectionError", "ClientConnectorError", "ServerDisconnectedError", "ClientOSError",
    "ClientPayloadError", "FSTimeoutError", "HTTPClientError", "ProxyConnectionError", "gaierror",
})


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def describe(exc: BaseException) -> str:
    """The root cause's type and first line, URLs redacted: for messages and logs."""
    root = _chain(exc)[-1]
    if isinstance(root, asyncio.TimeoutError):
        return "no answer in time"
    lines = str(root).strip().splitlines()
    text = f"{type(root).__name__}: {lines[0][:300]}" if lines else type(root).__name__
    return redact_text(text)


def classify(exc: BaseException) -> str | None:
    """'missing', 'denied', 'unavailable' (worth retrying) or None (not the store's doing).

    Looks through the whole cause chain: fsspec's HTTP filesystem, for one, reports a 403 or a
    refused connection as a ``FileNotFoundError`` caused by the real error."""
    chain = _chain(exc)
    for e in chain:
        status = getattr(e, "status", None)
        if isinstance(status, int) and not isinstance(status, bool):
            if status in (401, 403):
                return "denied"
            if status in (404, 410):
                return "missing"
            if status >= 500 or status in (408, 429):
                return "unavailable"
        if isinstance(e, PermissionError):
            return "denied"
        names = {cls.__name__ for cls in type(e).__mro__}
        if names & _TRANSIENT_NAMES or isinstance(e, (ConnectionError, TimeoutError)):
            return "unavailable"
    if any(isinstance(e, FileNotFoundError) for e in chain):
        return "missing"
    return None


@dataclass(frozen=True)
class RemoteObject:
    """What the store says an object (or a prefix) is now."""

    kind: str  # "file" or "directory"
    size: int
    version: str  # ETag, version id or generation; "size:mtime" where the store has none
    md5: str  # the content's MD5 when the store gives it (a single-part S3 ETag), else ""
    files: tuple[tuple[str, int], ...] = ()  # a directory's (relative path, size)


_VERSION_FIELDS = ("VersionId", "generation", "ETag", "etag", "md5Hash", "Content-MD5", "Digest")


def _version(info: Mapping[str, Any]) -> tuple[str, str]:
    """(version, md5) from an fsspec ``info`` dict, whatever the store calls them."""
    parts = [f"{name}={info[name]}" for name in _VERSION_FIELDS if info.get(name)]
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    md5 = etag if re.fullmatch(r"[0-9a-f]{32}", etag) else ""
    if not parts:
        mtime = info.get("mtime") or info.get("LastModified") or info.get("Last-Modified") or ""
        parts = [f"size={info.get('size')}", f"mtime={mtime}"]
    return ";".join(parts), md5


class Progress(Callback):
    """Logs a download's progress with size and rate, at most once per ``every_s``, once it is
    known to be at least ``min_bytes``."""

    def __init__(
        self, label: str, min_bytes: int, every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic, log: logging.Logger = logger,
    ) -> None:
        super().__init__()
        self._label, self._min, self._every, self._clock, self._log = label, min_bytes, every_s, clock, log
        self._start = self._last = clock()
        self.done = 0
        self.total: int | None = None

    def set_total(self, total: int) -> None:
        self.total = total

    def set_size(self, size: Any) -> None:  # per file; the total is ours
        pass

    def relative_update(self, inc: int = 1) -> None:
        self.done += inc or 0
        now = self._clock()
        if self.total is None or self.total < self._min or now - self._last < self._every:
            return
        self._last = now
        rate = self.done / max(now - self._start, 1e-9)
        self._log.info(
            "Downloading %s: %.1f of %.1f MB (%d%%) at %.1f MB/s.", self._label,
            self.done / 1e6, self.total / 1e6, 100 * self.done // max(self.total, 1), rate / 1e6,
        )

    def call(self, *args: Any, **kwargs: Any) -> None:
        pass


# What an S3 filesystem is given unless the caller's storage options say otherwise: one GET per
# download. Left to itself, s3fs opens a GET of the whole object to learn its length, drops it,
# and downloads objects over its block size (50 MB) again in ranged parts: a 256 MB object cost
# two requests from byte 0, and the server sent up to twice its bytes. One stream also reads one
# version of the object, where ranged parts of an object replaced mid-way could mix two.
_DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "s3": {"max_concurrency": 1}, "s3a": {"max_concurrency": 1},
}


def _options_key(protocol: str, options: Mapping[str, Any]) -> str:
    return protocol + "\n" + json.dumps(options, sort_keys=True, default=repr)


async def _close(fs: Any) -> None:
    """Close an async filesystem's client and session (best effort: private attributes)."""
    try:
        s3 = getattr(fs, "_s3", None)
        if s3 is not None:
            await s3.__aexit__(None, None, None)
        session = getattr(fs, "_session", None)
        if session is not None and hasattr(session, "close"):
            await session.close()
    except Exception:
        logger.debug("Closing a %s filesystem failed.", type(fs).__name__, exc_info=True)


async def _close_when_built(task: "asyncio.Task[Any]") -> None:
    try:
        fs = await task
    except BaseException:
        return
    await _close(fs)


class Filesystems:
    """Open fsspec filesystems, one per (protocol, storage options): per event loop for the
    async ones (their client and session belong to the loop that made them), one set for the
    others. Each set is an LRU of ``size``; an async filesystem pushed out is closed."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.built = 0  # how many were built: a fetch of a copy on disk should build none
        self._by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, OrderedDict[str, asyncio.Task[Any]]]" = (
            weakref.WeakKeyDictionary()
        )
        self._watchers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]" = (
            weakref.WeakKeyDictionary()
        )
        self._sync: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()  # the sync set is shared by every loop's threads
        self._closing: set[asyncio.Task[Any]] = set()

    async def get(self, protocol: str, options: Mapping[str, Any], is_async: bool) -> Any:
        key = _options_key(protocol, options)
        if not is_async:
            with self._lock:
                if key in self._sync:
                    self._sync.move_to_end(key)
                    return self._sync[key]
            fs = await asyncio.to_thread(
                fsspec.filesystem, protocol, skip_instance_cache=True, **options
            )
            with self._lock:
                self.built += 1
                fs = self._sync.setdefault(key, fs)
                while len(self._sync) > self.size:
                    self._sync.popitem(last=False)  # nothing to close: no session of a loop
            return fs
        loop = asyncio.get_running_loop()
        entries = self._by_loop.get(loop)
        if entries is None:
            for other in [x for x in self._by_loop if x.is_closed()]:  # closed without
                self._by_loop.pop(other, None)  # shutdown_asyncgens: nothing left to close on
                self._watchers.pop(other, None)
            entries = self._by_loop[loop] = OrderedDict()
            watcher = self._until_the_loop_ends()
            await watcher.__anext__()
            self._watchers[loop] = watcher
        task = entries.get(key)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = entries[key] = loop.create_task(self._build(protocol, options))
            while len(entries) > self.size:
                _, old = entries.popitem(last=False)
                closing = loop.create_task(_close_when_built(old))
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
        else:
            entries.move_to_end(key)
        return await asyncio.shield(task)  # concurrent first calls share one build

    async def _build(self, protocol: str, options: Mapping[str, Any]) -> Any:
        self.built += 1
        fs = fsspec.filesystem(protocol, asynchronous=True, skip_instance_cache=True, **options)
        setter = getattr(fs, "set_session", None)
        if setter is not None:
            await setter()
        return fs

    async def _until_the_loop_ends(self) -> AsyncIterator[None]:
        """Started once per loop and left suspended: ``asyncio.run`` (or anyone calling
        ``loop.shutdown_asyncgens()``) finalizes it before closing the loop, and that closes
        the loop's filesystems on it."""
        try:
            yield
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the running loop's filesystems: the loop is about to end."""
        loop = asyncio.get_running_loop()
        self._watchers.pop(loop, None)
        entries = self._by_loop.pop(loop, None) or {}
        for task in entries.values():
            await _close_when_built(task)

    def close_at_exit(self) -> None:
        """Best effort, for loops still open at exit and not running (a stopped user loop)."""
        for loop, entries in list(self._by_loop.items()):
            if loop.is_closed() or loop.is_running() or not entries:
                continue
            try:
                loop.run_until_complete(
                    asyncio.gather(*(_close_when_built(t) for t in entries.values()))
                )
            except Exception:
                pass
        self._by_loop.clear()


filesystems = Filesystems()
atexit.register(filesystems.close_at_exit)


async def close_filesystems() -> None:
    """Close the filesystems this loop opened (``serve.fetch`` outside a loop; a replica that
    stops)."""
    await filesystems.close()


class Store:
    """One URI in its filesystem; each call is one attempt (the caller retries)."""

    def __init__(self, uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.uri = uri
        self.label = redact(uri)
        self._options = dict(storage_options or {})
        protocol, _ = fsspec.core.split_protocol(uri)
        self._protocol = "file" if protocol in (None, "local") else protocol
        self._fs_options = {**_DEFAULT_OPTIONS.get(self._protocol, {}), **self._options}
        self.wants_directory = uri.endswith("/")
        cls = fsspec.get_filesystem_class(self._protocol)
        self._async = bool(getattr(cls, "async_impl", False))
        self._path = cls._strip_protocol(uri)
        if isinstance(self._path, str) and self._path.endswith("/") and len(self._path) > 1:
            self._path = self._path.rstrip("/")
        if self._protocol in ("http", "https"):
            self._path = uri  # HTTP keeps the whole URL, query string included

    def cache_key(self) -> str:
        """The artifact's name on disk: its URI without credentials, plus the endpoint (two
        MinIOs may have the same bucket), hashed."""
        client = self._options.get("client_kwargs") or {}
        endpoint = self._options.get("endpoint_url") or client.get("endpoint_url") or ""
        where = self._path if self._protocol in ("http", "https") else f"{self._protocol}://{self._path}"
        text = f"{redact(where)}\n{redact(str(endpoint))}\n{self.wants_directory}"
        return hashlib.sha256(text.encode()).hexdigest()[:40]

    async def _filesystem(self) -> Any:
        return await filesystems.get(self._protocol, self._fs_options, self._async)

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        fs = await self._filesystem()
        if self._async:
            return await getattr(fs, "_" + name)(*args, **kwargs)
        return await asyncio.to_thread(getattr(fs, name), *args, **kwargs)

    async def stat(self) -> RemoteObject:
        """What the object is now; raises what the store raised (see ``classify``)."""
        if not self.wants_directory:
            info = await self._call("info", self._path)
            if info.get("type") != "directory":
                version, md5 = _version(info)
                return RemoteObject("file", int(info.get("size") or 0), version, md5)
        found = await self._call("find", self._path, detail=True)
        if not found:
            raise FileNotFoundError(self.label)
        files, versions = [], []
        for path, info in sorted(found.items()):
            rel = posixpath.relpath(self._strip(path), self._strip(self._path))
            files.append((rel, int(info.get("size") or 0)))
            versions.append(f"{rel}:{_version(info)[0]}")
        digest = hashlib.sha256("\n".join(versions).encode()).hexdigest()
        return RemoteObject("directory", sum(s for _, s in files), digest, "", tuple(files))

    def _strip(self, path: str) -> str:
        fs_cls = fsspec.get_filesystem_class(self._protocol)
        return str(fs_cls._strip_protocol(path)).rstrip("/")

    async def download(self, obj: RemoteObject, target: str, progress: Progress) -> None:
        """Copy the object (or every file of the prefix) to ``target``."""
        progress.set_total(obj.size)
        if obj.kind == "file":
            await self._call("get_file", self._path, target, callback=progress)
            return
        os.makedirs(target, exist_ok=True)
        base = self._strip(self._path)
        for rel, _ in obj.files:
            local = os.path.join(target, *rel.split("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            await self._call("get_file", f"{base}/{rel}", local, callback=progress)
