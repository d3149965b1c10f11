"""A WebSocket at the replica: its client's messages for the ingress app's ``receive``.

The proxy carries the socket both ways. What the app sends goes down as a streamed reply, in
the outbox's credit window; what the client sends comes up as ``SocketIn`` messages, queued
here, and this end returns ``Credit`` as the app takes them (every ``CREDIT_EVERY`` messages
or ``CREDIT_BYTES`` bytes), so the proxy has at most a window of them in flight and a client
that floods a slow app waits on its own socket. The request, and the lease on its model,
last as long as the app's handler runs: the model is in use while the socket is open.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Callable

from .._data.replies import CREDIT_BYTES, CREDIT_EVERY

__all__ = ["SocketInbox", "message_size"]

_CONNECT = {"type": "websocket.connect"}


def message_size(message: Any) -> int:
    """The bytes a client's message holds (its text or its bytes)."""
    body = message.get("bytes") or message.get("text") or b""
    return len(body)


class SocketInbox:
    """The client's messages for one socket, in order; ``websocket.connect`` first, as an ASGI
    server says it, and ``websocket.disconnect`` (with the client's close code) last."""

    __slots__ = ("_queue", "_waiter", "_credit", "_taken", "_taken_bytes", "disconnected")

    def __init__(self, credit: Callable[[int], None]) -> None:
        self._queue: collections.deque[Any] = collections.deque([_CONNECT])
        self._waiter: asyncio.Future | None = None
        self._credit = credit
        self._taken = 0
        self._taken_bytes = 0
        self.disconnected = False  # the app has been told the client went away

    def put(self, message: Any) -> None:
        self._queue.append(message)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> Any:
        while not self._queue:
            if self.disconnected:
                return {"type": "websocket.disconnect", "code": 1006}
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        message = self._queue.popleft()
        kind = message.get("type")
        if kind == "websocket.disconnect":
            self.disconnected = True
        elif kind == "websocket.receive":
            self._taken += 1
            self._taken_bytes += message_size(message)
            if self._taken >= CREDIT_EVERY or self._taken_bytes >= CREDIT_BYTES:
                self._credit(self._taken)
                self._taken = self._taken_bytes = 0
        return dict(message)
