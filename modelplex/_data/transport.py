"""The channel between routers, replicas and the controller over TCP (``channel`` holds the
seam, the handshake and the framing; the server bounds the handshake with a timeout).

A frame is built in one buffer:
concurrent senders never interleave, and no message costs a task or a lock. Frames sent in one
turn of the event loop leave in one write, so a busy proxy or replica makes one system call
per peer per turn rather than one per message. Frames use the standard pickler, and cloudpickle
only for what it cannot ship by reference (local classes, lambdas, ``__main__``). A
``Connection`` belongs to the event loop that made it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import socket
from typing import Awaitable, Callable

from .channel import (
    MAX_FRAME_BYTES,
    AuthenticationError,
    ConnectionClosed,
    check_secret,
    client_handshake,
    encode_frame,
    HEADER_BYTES,
    server_handshake,
)

__all__ = ["Connection", "Server", "adopt", "connect", "start_server"]

logger = logging.getLogger("modelplex.transport")

# StreamReader pauses the socket once twice this much is buffered and unread.
_STREAM_LIMIT = 1 << 20
# Frames written in one turn are joined up to this size; larger batches go out unjoined.
_JOIN_BYTES = 1 << 16
# How long Server.close() lets handlers notice their closed connection before cancelling them.
_HANDLER_GRACE_S = 0.25


class Connection:
    """One authenticated peer; send and receive whole Python objects."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
        *,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self.peer = peer
        # Frames longer than this are refused in both directions.
        self.max_frame_bytes = max_frame_bytes
        self._reader = reader
        self._writer = writer
        self._transport = writer.transport
        self._high_water = self._transport.get_write_buffer_limits()[1]
        # Only the slow path (a full write buffer) takes it: one drain waiter at a time is all
        # some Python 3.10 releases' StreamWriter supports.
        self._drain_lock = asyncio.Lock()
        self._pending: list[bytes] | None = None  # frames waiting for this turn's write
        self._closed = False

    def __repr__(self) -> str:
        return f"<Connection {self.peer}{' closed' if self.closed else ''}>"

    @property
    def closed(self) -> bool:
        return self._closed or self._transport.is_closing() or self._reader.at_eof()

    def send_nowait(self, obj: object) -> None:
        """Queue one frame without waiting for the peer to read it.

        A pickling error or an over-limit object raises before anything is written, so the
        connection stays usable.
        """
        if self.closed:
            raise ConnectionClosed(f"connection to {self.peer} is closed")
        frame = encode_frame(obj, self.max_frame_bytes)
        if self._pending is None:
            self._pending = frame
            asyncio.get_running_loop().call_soon(self._flush)
        else:
            self._pending.extend(frame)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if not pending or self._transport.is_closing():
            return
        if sum(map(len, pending)) <= _JOIN_BYTES:
            self._transport.write(b"".join(pending))
        else:  # large frames: no extra copy
            self._transport.writelines(pending)

    async def send(self, obj: object) -> None:
        """``send_nowait``, then wait for the peer only if the write buffer is over its limit."""
        self.send_nowait(obj)
        self._flush()
        if self._transport.get_write_buffer_size() > self._high_water:
            async with self._drain_lock:
                try:
                    await self._writer.drain()
                except OSError as exc:
                    self.close()
                    raise ConnectionClosed(f"connection to {self.peer} lost: {exc}") from exc

    async def recv(self) -> object:
        """The next object; ``ConnectionClosed`` once the peer is gone and its frames are read.

        An object that does not unpickle here raises its unpickling error; the frame is consumed
        and the connection stays usable.
        """
        if self._closed:
            raise ConnectionClosed(f"connection to {self.peer} is closed")
        size = int.from_bytes(await self._read(HEADER_BYTES), "big")
        if size > self.max_frame_bytes:
            logger.warning(
                "Closing the connection to %s: it sent a frame of %d bytes, over the limit of %d.",
                self.peer, size, self.max_frame_bytes,
            )
            self.close()
            raise ConnectionClosed(f"{self.peer} sent a frame of {size} bytes, over the limit")
        return pickle.loads(await self._read(size))

    async def _read(self, n: int) -> bytes:
        try:
            return await self._reader.readexactly(n)
        except asyncio.IncompleteReadError:
            self.close()
            raise ConnectionClosed(f"{self.peer} closed the connection") from None
        except OSError as exc:
            self.close()
            raise ConnectionClosed(f"connection to {self.peer} lost: {exc}") from exc

    def close(self) -> None:
        """Close after flushing what is already queued; idempotent."""
        if not self._closed:
            self._flush()
            self._closed = True
            self._writer.close()

    def detach(self) -> int:
        """Give this connection up on its loop, for ``adopt`` on another: a duplicate of the
        socket's file descriptor. Only between messages, with nothing read ahead."""
        self._flush()
        if self._transport.get_write_buffer_size() or getattr(self._reader, "_buffer", b""):
            raise RuntimeError(f"cannot detach the connection to {self.peer}: data in flight")
        fd = os.dup(self._transport.get_extra_info("socket").fileno())
        self._closed = True
        self._transport.abort()  # closes our descriptor only: the duplicate keeps the socket
        return fd

    async def wait_closed(self) -> None:
        try:
            await self._writer.wait_closed()
        except OSError:  # the connection ended with an error; it is closed all the same
            pass


class Server:
    """Accepts connections, authenticates them, and runs ``handler`` on each in its own task."""

    def __init__(
        self,
        handler: Callable[[Connection], Awaitable[None]],
        secret: bytes,
        handshake_timeout_s: float,
        max_frame_bytes: int,
    ) -> None:
        self.address: tuple[str, int] = ("", 0)
        self._handler = handler
        self._secret = secret
        self._handshake_timeout_s = handshake_timeout_s
        self._max_frame_bytes = max_frame_bytes
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()  # every live socket, authenticated or not
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    def __repr__(self) -> str:
        return f"<Server {self.address[0]}:{self.address[1]}>"

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, so the task is ours: we can cancel it on close without asyncio
        # reporting the cancellation as an error.
        if self._closing:
            writer.close()
            return
        self._writers.add(writer)
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_name(writer)
        try:
            _set_nodelay(writer)
            try:
                await asyncio.wait_for(
                    server_handshake(reader, writer, self._secret), self._handshake_timeout_s
                )
            except asyncio.TimeoutError:  # before OSError: on 3.11+ it is the builtin TimeoutError
                logger.warning(
                    "Dropped the connection from %s: no handshake within %gs.",
                    peer, self._handshake_timeout_s,
                )
                return
            except AuthenticationError as exc:
                logger.warning("Refused the connection from %s: %s", peer, exc)
                return
            except (asyncio.IncompleteReadError, OSError):
                logger.debug("%s went away during the handshake.", peer)
                return
            conn = Connection(reader, writer, peer, max_frame_bytes=self._max_frame_bytes)
            try:
                await self._handler(conn)
            except ConnectionClosed:
                logger.debug("Connection from %s closed.", peer)
            except Exception:
                logger.exception("The handler for the connection from %s failed.", peer)
        finally:
            writer.close()
            self._writers.discard(writer)

    async def close(self) -> None:
        """Stop listening and close every connection; return once their handlers have ended.

        A handler blocked on ``recv`` ends on its own; one still running after a short grace
        period is cancelled.
        """
        self._closing = True
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        tasks = self._tasks - {asyncio.current_task()}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_HANDLER_GRACE_S)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._server is not None:
            await self._server.wait_closed()


async def start_server(
    handler: Callable[[Connection], Awaitable[None]],
    *,
    secret: bytes,
    host: str = "127.0.0.1",
    port: int = 0,
    handshake_timeout_s: float = 5.0,
    max_frame_bytes: int = MAX_FRAME_BYTES,
) -> Server:
    """Listen on ``host:port`` (port 0 picks a free one; see ``Server.address``).

    ``handler`` runs once per authenticated connection; the connection is closed when it returns.
    A ``ConnectionClosed`` escaping it is normal; any other exception is logged.
    """
    check_secret(secret)
    server = Server(handler, secret, handshake_timeout_s, max_frame_bytes)
    server._server = await asyncio.start_server(server._accept, host, port, limit=_STREAM_LIMIT)
    bound_host, bound_port = server._server.sockets[0].getsockname()[:2]
    server.address = (bound_host, bound_port)
    return server


async def adopt(fd: int, peer: str, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> Connection:
    """Carry on, on this loop, a connection that ``Connection.detach`` gave up on another."""
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=fd),
                                                   limit=_STREAM_LIMIT)
    return Connection(reader, writer, peer, max_frame_bytes=max_frame_bytes)


async def connect(
    address: tuple[str, int],
    *,
    secret: bytes,
    timeout_s: float = 10.0,
    max_frame_bytes: int = MAX_FRAME_BYTES,
) -> Connection:
    """Connect and authenticate both ways within ``timeout_s``.

    Raises ``AuthenticationError`` if the server refuses our proof or cannot prove its own,
    ``TimeoutError`` at the deadline, and ``ConnectionError`` (refused, closed) otherwise.
    """
    check_secret(secret)
    host, port = address

    async def attempt() -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=_STREAM_LIMIT)
        try:
            _set_nodelay(writer)
            await client_handshake(reader, writer, secret, f"{host}:{port}")
        except BaseException:
            writer.close()
            raise
        return Connection(reader, writer, _peer_name(writer), max_frame_bytes=max_frame_bytes)

    try:
        return await asyncio.wait_for(attempt(), timeout_s)
    except asyncio.TimeoutError:
        raise TimeoutError(f"no authenticated connection to {host}:{port} within {timeout_s}s") from None


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    """Small replies must not wait on Nagle; asyncio and uvloop default to it, but say so."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - the socket died under us; the read will say so
            pass
