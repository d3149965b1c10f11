"""Streamed replies, the replica's end: chunks leave the replica as they are produced.

A generator's items (or an HTTP response's body pieces) travel as ``Chunk`` messages ahead of
the request's ``Result``, which ends the stream. The replica sends a stream's chunks only
while fewer than ``WINDOW`` chunks and ``WINDOW_BYTES`` bytes of it are unconsumed, and the
caller returns ``Credit`` as it takes them, so a slow reader pauses the generator itself:
neither side holds more than a window (and one chunk) of a stream in memory, and one slow
stream never stalls the others sharing its connection (TCP's own flow control would).

This end is the ``Outbox`` (and ``HTTPSink``, which streams an ASGI response only if its body
comes in pieces); the caller's end is ``_data/replies.py``'s ``ReplyStream``, read by the proxy
and by ``DeploymentResponseGenerator``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import inspect
import json
import os
import pickle
from typing import Any, Awaitable, Callable, Protocol

import cloudpickle
import starlette.responses
from starlette.responses import StreamingResponse

from .._http.conversions import json_default  # numpy values, as whole responses encode them
from .._data.replies import CREDIT_BYTES, CREDIT_EVERY, WINDOW, WINDOW_BYTES
from .._messages import Chunk, GRPCReply, HTTPResult, Result

__all__ = [
    "CREDIT_BYTES",
    "CREDIT_EVERY",
    "WINDOW",
    "WINDOW_BYTES",
    "HTTPSink",
    "Outbox",
    "Outboxes",
    "RequestKey",
    "Sender",
    "dumps",
    "install",
    "iterate_closing",
    "close",
    "is_generator",
    "pump",
    "stream_http",
    "streams_over_http",
]


# Return values that pickle the same with or without cloudpickle (the standard pickler is
# twice as fast).
_PLAIN_VALUES = frozenset({HTTPResult, GRPCReply, str, bytes, int, float, bool, type(None)})
NONE = pickle.dumps(None, protocol=5)


def dumps(value: Any) -> bytes:
    if type(value) in _PLAIN_VALUES:
        return pickle.dumps(value, protocol=5)
    return cloudpickle.dumps(value, protocol=5)


def is_generator(value: Any) -> bool:
    return inspect.isgenerator(value) or inspect.isasyncgen(value)


async def close(gen: Any) -> None:
    """Close a generator that will not be read (one not started runs none of its code)."""
    if inspect.isasyncgen(gen):
        await gen.aclose()
    else:
        gen.close()


# ---- the replica's end ----------------------------------------------------------------------


class Sender(Protocol):
    """What an outbox uses of a router's connection."""

    @property
    def closed(self) -> bool: ...

    def send_nowait(self, message: Any) -> None: ...


class Outbox:
    """Sends one request's reply: its chunks within the credit window, then its Result.

    The window counts chunks and bytes: another chunk goes while fewer than ``WINDOW`` chunks
    and ``WINDOW_BYTES`` bytes are out and not yet credited, so at most a window and one chunk
    are in flight. The reader credits at least every ``CREDIT_EVERY`` chunks or
    ``CREDIT_BYTES`` bytes, both under the window, so a reader that waits has always freed
    room for the next chunk. ``answer`` may
    come before the request's task ends (an HTTP response is complete before its background
    tasks run), so the replica asks ``answered`` before replying itself."""

    __slots__ = ("_conn", "request_id", "_sizes", "_bytes", "_room", "started", "answered")

    def __init__(self, conn: Sender, request_id: int) -> None:
        self._conn = conn
        self.request_id = request_id
        self._sizes: collections.deque[int] = collections.deque()  # sent, not yet credited
        self._bytes = 0
        self._room: asyncio.Future | None = None
        self.started = False  # a chunk has been sent: errors now end the stream
        self.answered = False

    async def put(self, item: Any) -> None:
        payload = dumps(item)
        while len(self._sizes) >= WINDOW or self._bytes >= WINDOW_BYTES:
            self._room = asyncio.get_running_loop().create_future()
            await self._room
        self._conn.send_nowait(Chunk(self.request_id, payload))
        self._sizes.append(len(payload))
        self._bytes += len(payload)
        self.started = True

    def credit(self, n: int) -> None:
        sizes = self._sizes
        for _ in range(min(n, len(sizes))):
            self._bytes -= sizes.popleft()
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)

    def answer(self, result: Result) -> None:
        self.answered = True
        if not self._conn.closed:
            self._conn.send_nowait(result)


RequestKey = tuple[int, int]  # (the id of a router's connection, the request's id on it)


class Outboxes:
    """The outboxes of one replica's requests, by ``RequestKey``: made when a request first
    needs one (a reply that streams, or is answered before its task ends; a whole reply
    needs none), found again when the caller's credit arrives, dropped when the task ends."""

    def __init__(self) -> None:
        self._by_key: dict[RequestKey, Outbox] = {}

    def open(self, conn: Sender, key: RequestKey) -> Outbox:
        outbox = self._by_key[key] = Outbox(conn, key[1])
        return outbox

    def get(self, key: RequestKey) -> Outbox | None:
        return self._by_key.get(key)

    def pop(self, key: RequestKey) -> Outbox | None:
        return self._by_key.pop(key, None)


# Sync generators step in threads of their own pool: a step that outlives a cancelled stream
# must finish before the generator can be closed, and only a future of the pool says when.
_steps: concurrent.futures.ThreadPoolExecutor | None = None
_DONE = object()


def _step(gen: Any) -> Any:
    return next(gen, _DONE)


def _thread_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _steps
    if _steps is None:
        _steps = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(32, (os.cpu_count() or 1) + 4), thread_name_prefix="modelplex-stream"
        )
    return _steps


async def pump(gen: Any, put: Callable[[Any], Awaitable[None]]) -> None:
    """Feed a generator's items to ``put``, and close the generator however this ends (its
    ``finally`` blocks run when a client goes away, not when the garbage collector gets it).
    Any async iterable works; a sync generator steps in a thread."""
    if inspect.isgenerator(gen):
        gen = iterate_closing(gen)
    try:
        async for item in gen:
            await put(item)
    finally:
        aclose = getattr(gen, "aclose", None)
        if aclose is not None:
            await aclose()


async def iterate_closing(iterator: Any) -> Any:
    """Starlette's ``iterate_in_threadpool`` (each step in a thread), but closing a generator
    as soon as the stream ends early: after the step under way, if there is one. Starlette's
    leaves the generator to the garbage collector, and a worker thread may keep it alive."""
    gen = iter(iterator)
    context = contextvars.copy_context()  # get_multiplexed_model_id() works in the thread
    pool = _thread_pool()
    step: concurrent.futures.Future | None = None
    try:
        while True:
            step = pool.submit(context.run, _step, gen)
            item = await asyncio.wrap_future(step)
            step = None
            if item is _DONE:
                return
            yield item
    finally:
        close = getattr(gen, "close", None)  # a plain iterator has nothing to close
        if close is not None and step is not None and not step.done():
            step.add_done_callback(lambda _: close())  # after the step under way
        elif close is not None:
            await asyncio.wrap_future(pool.submit(context.run, close))


def install() -> None:
    """In a replica: every ``StreamingResponse`` over a sync iterator, an ingress app's too,
    steps it with ``iterate_closing``, so a client that goes away runs its ``finally`` now."""
    starlette.responses.iterate_in_threadpool = iterate_closing


class HTTPSink:
    """Receives one ASGI response. A body that comes in one message makes one ``HTTPResult``
    (the fast path: one reply message); a body in pieces streams, head first, as it comes."""

    __slots__ = ("_outbox", "_whole", "_status", "_headers", "streaming", "complete")

    def __init__(self, outbox: Outbox, whole: Callable[[HTTPResult], None]) -> None:
        self._outbox = outbox
        self._whole = whole  # answers a response that came in one piece
        self._status = 500
        self._headers: tuple[tuple[bytes, bytes], ...] = ()
        self.streaming = False
        self.complete = False

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self._status = message["status"]
            self._headers = tuple((bytes(k), bytes(v)) for k, v in message.get("headers", ()))
            return
        if kind != "http.response.body" or self.complete:
            return
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if not self.streaming:
            if not more:
                self.complete = True
                self._whole(HTTPResult(self._status, self._headers, bytes(body)))
                return
            self.streaming = True
            await self._outbox.put(HTTPResult(self._status, self._headers, b""))
        if body:
            await self._outbox.put(bytes(body))
        if not more:
            self.complete = True
            self._outbox.answer(Result(self._outbox.request_id, True, NONE))


def streams_over_http(value: Any) -> bool:
    """Whether a handler's return value is sent in pieces: a ``StreamingResponse`` or a bare
    generator (anything else is rendered whole, the fast path)."""
    return isinstance(value, StreamingResponse) or is_generator(value)


async def stream_http(value: Any, sink: HTTPSink) -> None:
    if isinstance(value, StreamingResponse):
        await _stream_response(value, sink)
    else:
        await _stream_items(value, sink)


async def _stream_response(response: StreamingResponse, sink: HTTPSink) -> None:
    """What ``StreamingResponse.__call__`` does, but closing its iterator when the stream ends
    early (Starlette leaves that to the garbage collector)."""
    await sink.send({"type": "http.response.start", "status": response.status_code,
                     "headers": response.raw_headers})
    charset = response.charset

    async def put(chunk: Any) -> None:
        if not isinstance(chunk, (bytes, memoryview)):
            chunk = chunk.encode(charset)
        await sink.send({"type": "http.response.body", "body": chunk, "more_body": True})

    await pump(response.body_iterator, put)
    await sink.send({"type": "http.response.body", "body": b"", "more_body": False})
    if response.background is not None:
        await response.background()


async def _stream_items(gen: Any, sink: HTTPSink) -> None:
    """A handler that is itself a generator, over HTTP: str items as UTF-8 text, bytes as they
    are, anything else as JSON lines; the first item decides the content type."""
    started = False

    async def put(item: Any) -> None:
        nonlocal started
        if not started:
            started = True
            await sink.send({"type": "http.response.start", "status": 200,
                             "headers": [(b"content-type", _media_type(item))]})
        await sink.send({"type": "http.response.body", "body": _encode_item(item),
                         "more_body": True})

    await pump(gen, put)
    if not started:
        await sink.send({"type": "http.response.start", "status": 200,
                         "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
    await sink.send({"type": "http.response.body", "body": b"", "more_body": False})


def _media_type(item: Any) -> bytes:
    if isinstance(item, str):
        return b"text/plain; charset=utf-8"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return b"application/octet-stream"
    return b"application/x-ndjson"


def _encode_item(item: Any) -> bytes:
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    return json.dumps(item, ensure_ascii=False, separators=(",", ":"), default=json_default).encode() + b"\n"
