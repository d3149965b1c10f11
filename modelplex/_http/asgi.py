"""The small ASGI pieces every part of the HTTP edge uses: read a body, answer with bytes, text,
JSON or an error, notice a client that went away, and hear the status a reply started with."""

from __future__ import annotations

import json
from typing import Any, Iterable

from .._errors import ClientDisconnectedError, PayloadTooLargeError, error_response
from .._types import Message, Receive, Scope, Send

Headers = Iterable[tuple[bytes, bytes]]


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; ``PayloadTooLargeError`` past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def disconnected(receive: Receive) -> None:
    """Return once the client has gone away (the body is read before this runs)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def send_body(
    send: Send, status: int, body: bytes, content_type: bytes, extra: Headers = ()
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_text(
    send: Send, status: int, text: str | bytes, media: str = "text/plain", extra: Headers = ()
) -> None:
    """``text`` (UTF-8 when bytes) as ``media``, with its charset said."""
    body = text.encode() if isinstance(text, str) else text
    await send_body(send, status, body, f"{media}; charset=utf-8".encode(), extra)


async def send_json(send: Send, status: int, value: Any, extra: Headers = ()) -> None:
    await send_text(send, status, json.dumps(value), "application/json", extra)


async def send_error(send: Send, exc: BaseException) -> None:
    """The error's documented status and message (``_errors.error_response``)."""
    status, headers, body = error_response(exc)
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive: Receive, send: Send) -> None:
    """Nothing to start or stop: say so to a server that asks."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def client(scope: Scope) -> str:
    """``host:port`` of the client, for log lines."""
    peer = scope.get("client")
    return f"{peer[0]}:{peer[1]}" if peer else "?"


class StatusOf:
    """A ``send`` that passes every message on and keeps the status the reply started with
    (``status`` until then; 0 means none: the access log's "-", the metrics' 499 for a client
    gone away)."""

    __slots__ = ("_send", "status")

    def __init__(self, send: Send, status: int = 0) -> None:
        self._send = send
        self.status = status

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)
