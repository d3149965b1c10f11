"""The caller's end of a streamed reply, and the credit window both ends keep.

A replica sends a stream's ``Chunk``s while fewer than ``WINDOW`` chunks and ``WINDOW_BYTES``
bytes of it are unconsumed; the reader here returns ``Credit`` every ``CREDIT_EVERY`` chunks or
``CREDIT_BYTES`` bytes, both under the window, so a reader that waits always leaves room. The
replica's end is ``modelplex._replica.outbox``.
"""

from __future__ import annotations

import asyncio
import collections
import pickle
from typing import Any, Callable

from .._messages import Result

__all__ = ["CREDIT_BYTES", "CREDIT_EVERY", "WINDOW", "WINDOW_BYTES", "ReplyStream", "Uplink"]

WINDOW = 32  # chunks a stream may run ahead of its reader
WINDOW_BYTES = 4 << 20  # and bytes
CREDIT_EVERY = 8  # the reader returns credit in steps of this many chunks
CREDIT_BYTES = 1 << 20  # or of this many bytes, whichever comes first


class ReplyStream:
    """The caller's end of one streamed reply, on the router's loop: items in order, then the
    end, or the error the generator raised.

    ``close`` stops it early (a client went away, the caller cancelled or dropped it): the
    replica is told to cancel, which closes the generator there. ``on_end`` runs once, however
    the stream ends (the router frees the request's slot in it)."""

    def __init__(
        self,
        credit: Callable[[int], None],
        cancel: Callable[[], None],
        up: Callable[[Any], None] | None = None,
    ) -> None:
        self._items: collections.deque[bytes] = collections.deque()
        self._end: Result | None = None
        self._error: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self._taken = 0  # chunks consumed and not yet credited
        self._taken_bytes = 0
        self._credit = credit
        self._cancel = cancel
        self.on_end: Callable[[], None] | None = None
        self.decode_item: Callable[[bytes], Any] = pickle.loads
        self.decode_end: Callable[[Result], Any] = lambda result: None
        self.end_value: Any = None  # what decode_end made of the Result (a gRPC stream's status)
        self._up = up  # sends one message up the stream (a WebSocket's client messages)
        self._uplink: Uplink | None = None

    @property
    def uplink(self) -> "Uplink":
        """The way up the stream, for a caller that talks back (a WebSocket's proxy)."""
        if self._uplink is None:
            self._uplink = Uplink(self._up or (lambda message: None))
            if self.finished:
                self._uplink.close()
        return self._uplink

    @classmethod
    def ended(cls, result: Result) -> "ReplyStream":
        """A stream that ended before its first chunk: empty, or failed."""
        stream = cls(lambda n: None, lambda: None)
        stream.finish(result)
        return stream

    @property
    def finished(self) -> bool:
        return self._end is not None or self._error is not None

    # -- the connection's reader feeds it --

    def push(self, payload: bytes) -> None:
        self._items.append(payload)
        self._wake()

    def finish(self, result: Result) -> None:
        if not self.finished:
            self._end = result
            self._ended()

    def fail(self, error: BaseException) -> None:
        if not self.finished:
            self._error = error
            self._items.clear()
            self._ended()

    def close(self, error: BaseException | None = None) -> None:
        """The caller is done with it early: cancel the rest at the replica."""
        if not self.finished:
            self._cancel()
            self.fail(error or asyncio.CancelledError("the stream was cancelled"))

    def _ended(self) -> None:
        self._wake()
        if self._uplink is not None:
            self._uplink.close()
        on_end, self.on_end = self.on_end, None
        if on_end is not None:
            on_end()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the caller reads it --

    async def next_batch(self) -> list[Any]:
        """The items that arrived since the last call (at least one, waiting for it); ``[]``
        once the stream has ended; raises what the generator raised, after its items."""
        while not self._items and not self.finished:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        if self._items:
            payloads = list(self._items)
            self._items.clear()
            if not self.finished:
                self._taken += len(payloads)
                self._taken_bytes += sum(map(len, payloads))
                if self._taken >= CREDIT_EVERY or self._taken_bytes >= CREDIT_BYTES:
                    self._credit(self._taken)
                    self._taken = self._taken_bytes = 0
            return [self.decode_item(payload) for payload in payloads]
        if self._error is not None:
            raise self._error
        assert self._end is not None
        self.end_value = self.decode_end(self._end)  # raises the remote error, if it failed
        return []


class Uplink:
    """The caller's messages up a two-way stream (a WebSocket client's, to the replica's app),
    within the same window as the replies coming down: at most ``WINDOW`` messages and
    ``WINDOW_BYTES`` bytes the app has not consumed. The replica returns ``Credit`` as its app
    takes them; a caller that must wait for room stops reading its client, so a client that
    floods a slow app is held back by TCP, not buffered."""

    __slots__ = ("_send", "_sizes", "_bytes", "_room", "closed")

    def __init__(self, send: Callable[[Any], None]) -> None:
        self._send = send
        self._sizes: collections.deque[int] = collections.deque()
        self._bytes = 0
        self._room: asyncio.Future | None = None
        self.closed = False  # the stream ended: nobody reads what is sent up

    async def send(self, message: Any, size: int) -> None:
        while not self.closed and (len(self._sizes) >= WINDOW or self._bytes >= WINDOW_BYTES):
            self._room = asyncio.get_running_loop().create_future()
            await self._room
        self.send_now(message, size)

    def send_now(self, message: Any, size: int = 0) -> None:
        """Send without waiting for room (the client's last word: its disconnect)."""
        if self.closed:
            return
        self._send(message)
        self._sizes.append(size)
        self._bytes += size

    def credit(self, n: int) -> None:
        sizes = self._sizes
        for _ in range(min(n, len(sizes))):
            self._bytes -= sizes.popleft()
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)
