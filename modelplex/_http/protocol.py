"""uvicorn's httptools protocol with a bound on the request head it buffers, and one write
per response.

uvicorn gives the app a request only once its whole head (request line and headers) has
arrived, so a header limit checked in the app comes after the memory is spent: a client that
streams header lines for ever grows the server without bound. This protocol counts the bytes
that arrive while a request's head is incomplete and answers 431 once they pass the bound, so a
connection holds at most the bound plus one read from the socket.

uvicorn writes a response's head and its body with a system call each (and so sends two
packets). Here a request's writes within one turn of the loop leave together (``Corked``): a
whole response is one write, a stream one write per turn.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .._config import HTTPOptions
from .._errors import HeadersTooLargeError, error_response

# After a 431 the connection reads and drops what the client still sends, for this long, before
# closing: closing with unread data would reset it, and the client could lose the 431.
_LINGER_S = 1.0


def head_limit(options: HTTPOptions) -> int:
    """Bytes a request head may take on the wire: the app's own limit on header names and values
    (checked exactly once the head is complete), plus as much again for the request line, and
    the separators of the headers it allows."""
    return 2 * options.max_header_bytes + 4 * options.max_header_count


def bounded_protocol(limit: int) -> type[HttpToolsProtocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)`` for this bound."""
    return type("HeadBoundedProtocol", (HeadBoundedProtocol,), {"head_limit": limit})


class Corked:
    """A connection's transport as its request cycles write to it: what is written in one
    turn of the loop goes out in one write at the end of the turn."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._held is None:
            self._held = [data]
            self._loop.call_soon(self.flush)
        else:
            self._held.append(data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held:
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HeadBoundedProtocol(HttpToolsProtocol):
    head_limit = 64 * 1024  # set per server by bounded_protocol()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # waiting for, or inside, a request head
        self._head_bytes = 0
        self._head_began = False  # a message ended in this read, so the next head began in it
        self._refused = False
        self._corked: Corked | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._corked = Corked(transport, self.loop)

    def _flush(self) -> None:
        """What the cycles wrote leaves before the protocol writes or closes on its own."""
        if self._corked is not None:
            self._corked.flush()

    def send_400_response(self, msg: str) -> None:
        self._flush()
        super().send_400_response(msg)

    def shutdown(self) -> None:
        self._flush()
        super().shutdown()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._head_began = False
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        # Where a new head began inside this read is not known: its bytes there go uncounted,
        # which bounds the head by the limit plus one read rather than refusing a pipelined
        # request that followed a large body.
        if not self._head_began:
            self._head_bytes += len(data)
        if self._head_bytes > self.head_limit:
            self._refuse()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()
        if self.cycle is not None and self._corked is not None:
            self.cycle.transport = self._corked  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes, self._head_began = True, 0, True

    def _refuse(self) -> None:
        self._in_head = False
        self._flush()
        if self.cycle is not None and not self.cycle.response_complete:
            # The oversized head is pipelined behind a request still being answered: read no
            # more, and close the connection once that answer is sent.
            self.flow.pause_reading()
            self.cycle.keep_alive = False
            return
        error = HeadersTooLargeError(f"request head larger than {self.head_limit} bytes")
        status, headers, body = error_response(error)
        head = [STATUS_LINE[status]]
        for name, value in [*headers, (b"content-length", str(len(body)).encode())]:
            head.append(name + b": " + value + b"\r\n")
        self.transport.write(b"".join(head) + b"connection: close\r\n\r\n" + body)
        self._refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER_S, self.transport.close)
