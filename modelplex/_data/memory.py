"""An in-memory transport: channels between coroutines of one event loop, no sockets.

The ``Channel`` seam of ``channel``, filled the way httpx's ``MockTransport`` fills
its own: routers dial a ``MemoryNetwork`` instead of TCP, and a test scripts the replicas as
plain handlers, breaks connections and refuses dials. Every message is pickled on the way, so
what would not cross a real connection does not cross this one either.
"""

from __future__ import annotations

import asyncio
import pickle
from typing import Awaitable, Callable

from .channel import ConnectionClosed

__all__ = ["MemoryChannel", "MemoryNetwork"]

Handler = Callable[["MemoryChannel"], Awaitable[None]]

_EOF = object()


class MemoryChannel:
    """One end of an in-memory connection."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.peer: MemoryChannel | None = None
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._closed = False

    def __repr__(self) -> str:
        return f"<MemoryChannel {self.name}{' closed' if self._closed else ''}>"

    @property
    def closed(self) -> bool:
        return self._closed

    def send_nowait(self, obj: object) -> None:
        if self._closed or self.peer is None or self.peer._closed:
            raise ConnectionClosed(f"{self.name} is closed")
        self.peer._inbox.put_nowait(pickle.loads(pickle.dumps(obj, protocol=5)))

    async def recv(self) -> object:
        if self._closed and self._inbox.empty():
            raise ConnectionClosed(f"{self.name} is closed")
        message = await self._inbox.get()
        if message is _EOF:
            self._closed = True
            raise ConnectionClosed(f"{self.name} was closed")
        return message

    def close(self) -> None:
        """Close both ends: each side's pending ``recv`` ends with ``ConnectionClosed``."""
        for end in (self, self.peer):
            if end is not None and not end._closed:
                end._closed = True
                end._inbox.put_nowait(_EOF)


class MemoryNetwork:
    """Addresses served by handlers; ``dial`` is a ``Dialer`` for routers."""

    def __init__(self) -> None:
        self._handlers: dict[tuple[str, int], Handler] = {}
        self._open: dict[tuple[str, int], set[MemoryChannel]] = {}
        self._tasks: set[asyncio.Task] = set()
        self.dials: dict[tuple[str, int], int] = {}  # address -> dial attempts

    def listen(self, address: tuple[str, int], handler: Handler) -> None:
        self._handlers[address] = handler

    def refuse(self, address: tuple[str, int]) -> None:
        """Stop accepting at ``address``, as a process that died would (open ones stay)."""
        self._handlers.pop(address, None)

    def sever(self, address: tuple[str, int]) -> None:
        """Break every open connection to ``address`` (a network blip): both ends see it."""
        for channel in self._open.pop(address, set()):
            channel.close()

    def connections(self, address: tuple[str, int]) -> int:
        return sum(not c.closed for c in self._open.get(address, ()))

    async def dial(self, address: tuple[str, int]) -> MemoryChannel:
        self.dials[address] = self.dials.get(address, 0) + 1
        handler = self._handlers.get(address)
        if handler is None:
            raise ConnectionRefusedError(f"nothing listens at {address[0]}:{address[1]}")
        client, server = MemoryChannel(f"client->{address[1]}"), MemoryChannel(f"server:{address[1]}")
        client.peer, server.peer = server, client
        self._open.setdefault(address, set()).add(server)
        task = asyncio.get_running_loop().create_task(self._serve(handler, server))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return client

    async def _serve(self, handler: Handler, channel: MemoryChannel) -> None:
        try:
            await handler(channel)
        except ConnectionClosed:
            pass
        finally:
            channel.close()

    async def close(self) -> None:
        for address in list(self._open):
            self.sever(address)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
