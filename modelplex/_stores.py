"""The boundary with object stores: fsspec in, modelplex's errors out.

Everything that touches fsspec lives here: opening a filesystem for a URI, asking what an
object is now (size and version), copying it to a local path, and translating what the
store said into ``ModelNotFoundError``/``StorageAccessDeniedError``/``StorageUnavailableError``.
Async filesystems (s3fs, gcsfs, HTTP) run on the caller's loop; the others in a thread, so a
download never blocks a replica's user loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import posixpath
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

import fsspec
from fsspec.callbacks import Callback

__all__ = ["Progress", "RemoteObject", "Store", "classify", "describe", "redact", "redact_text"]

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


class Store:
    """One URI in its filesystem; each call is one attempt (the caller retries)."""

    def __init__(self, uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.uri = uri
        self.label = redact(uri)
        self._options = dict(storage_options or {})
        self._fs: Any = None
        protocol, _ = fsspec.core.split_protocol(uri)
        self._protocol = "file" if protocol in (None, "local") else protocol
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
        if self._fs is None:
            if self._async:
                self._fs = fsspec.filesystem(
                    self._protocol, asynchronous=True, skip_instance_cache=True, **self._options
                )
                setter = getattr(self._fs, "set_session", None)
                if setter is not None:
                    await setter()
            else:
                self._fs = await asyncio.to_thread(
                    fsspec.filesystem, self._protocol, skip_instance_cache=True, **self._options
                )
        return self._fs

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

    async def close(self) -> None:
        fs, self._fs = self._fs, None
        if fs is None or not self._async:
            return
        try:
            s3 = getattr(fs, "_s3", None)
            if s3 is not None:
                await s3.__aexit__(None, None, None)
            session = getattr(fs, "_session", None)
            if session is not None and hasattr(session, "close"):
                await session.close()
        except Exception:  # closing is best effort
            logger.debug("Closing the filesystem for %s failed.", self.label, exc_info=True)
