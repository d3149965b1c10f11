"""``GET /-/status``, the live page ``/-/dashboard`` and its event stream ``/-/events``.

While a page listens, ``StatusFeed`` collects the status four times a second and pushes a
change as a server-sent event, with the loads and unloads since the last one. Those come from
the replicas themselves (``events``: the controller's numbered timeline of their
``ModelEvents``), so a model loaded and evicted between two looks is on the page too. The
routes themselves, and their token, are in the management table (``routes.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from importlib import resources
from typing import Any, Awaitable, Callable

from .._types import Receive, Send, ServeStatus, status_dict
from .asgi import disconnected

logger = logging.getLogger("modelplex.proxy")

PERIOD_S = 0.25  # how often the feed looks while someone listens
HEARTBEAT_S = 2.0  # a document goes out at least this often (idle times move)
HISTORY = 100  # events a page that connects gets from before it did
_QUEUE = 8  # messages a slow page may fall behind before the oldest are dropped

# (after, last) -> (the number to ask after next, the events numbered after ``after``, at
# most the ``last`` of them); see ``_control.figures.Figures.timeline``.
Events = Callable[[int, "int | None"], "tuple[int, list[dict[str, Any]]]"]


def _no_events(after: int, last: int | None) -> tuple[int, list[dict[str, Any]]]:
    return after, []


def _shape(doc: dict[str, Any]) -> str:
    """The document without what moves on its own (idle times): a change of this is news."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "idle_s"}
        if isinstance(value, (list, tuple)):
            return [strip(v) for v in value]
        return value

    return json.dumps(strip(doc), sort_keys=True)


class StatusFeed:
    """Collects the status while someone listens, and hands each change to every listener."""

    def __init__(
        self,
        collect: Callable[[], Awaitable[ServeStatus]],
        *,
        events: Events = _no_events,
        period_s: float = PERIOD_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._collect = collect
        self._events = events
        self._period_s = period_s
        self._clock = clock
        self._listeners: set[asyncio.Queue] = set()
        self._task: asyncio.Task | None = None
        self._latest: dict[str, Any] | None = None
        self._cursor = 0  # the last event sent to the pages
        self._closed = False

    async def status(self) -> dict[str, Any]:
        return status_dict(await self._collect())

    def listen(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(_QUEUE)
        if self._latest is not None and self._task is not None and not self._task.done():
            # What the others have: the last document, and the events before it.
            history = [e for e in self._events(0, HISTORY)[1] if e["seq"] <= self._cursor]
            queue.put_nowait({**self._latest, "events": history})
        self._listeners.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return queue

    def leave(self, queue: asyncio.Queue) -> None:
        self._listeners.discard(queue)

    def close(self) -> None:
        """End every stream (the proxy is stopping)."""
        self._closed = True
        for queue in list(self._listeners):
            _put(queue, None)
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        shape, sent_at, fresh = "", 0.0, True
        while self._listeners and not self._closed:
            started = self._clock()
            try:
                doc = await self.status()
            except Exception:
                logger.debug("collecting the status failed", exc_info=True)
                await asyncio.sleep(1.0)
                continue
            now = self._clock()
            # A first look sends the last HISTORY events; then each look those since the last.
            cursor, events = self._events(self._cursor, HISTORY if fresh else None)
            self._cursor, fresh = cursor, False
            new_shape = _shape(doc)
            if new_shape != shape or events or now - sent_at >= HEARTBEAT_S:
                shape, sent_at = new_shape, now
                self._latest = {"time": round(now, 3), "status": doc}
                message = {**self._latest, "events": events}
                for queue in list(self._listeners):
                    _put(queue, message)
            await asyncio.sleep(max(0.0, self._period_s - (self._clock() - started)))

    async def stream(self, receive: Receive, send: Send) -> None:
        """``GET /-/events``: each change as a server-sent event until the client goes away
        or the feed closes; a comment every 15 s keeps idle connections open."""
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]})
        queue = self.listen()
        loop = asyncio.get_running_loop()
        gone = loop.create_task(disconnected(receive))
        try:
            while not self._closed:
                get = loop.create_task(queue.get())
                await asyncio.wait((get, gone), timeout=15, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    if gone.done():
                        return
                    chunk = b": keep-alive\n\n"
                else:
                    message = get.result()
                    if message is None:
                        break
                    chunk = b"data: " + json.dumps(message).encode() + b"\n\n"
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.leave(queue)
            gone.cancel()


_page: bytes | None = None


def page() -> bytes:
    global _page
    if _page is None:
        _page = resources.files("modelplex").joinpath("static/dashboard.html").read_bytes()
    return _page


def _put(queue: asyncio.Queue, message: Any) -> None:
    while True:
        try:
            queue.put_nowait(message)
            return
        except asyncio.QueueFull:
            queue.get_nowait()  # a page that fell behind loses the oldest
