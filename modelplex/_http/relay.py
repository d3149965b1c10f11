"""The relay of a streamed reply: the replica's chunks to the client, at the client's pace."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Iterable

from .._data.replies import ReplyStream
from .._errors import ClientDisconnectedError
from .._messages import HTTPResult
from .._types import Receive, Scope, Send
from .asgi import client, disconnected

logger = logging.getLogger("modelplex.proxy")


async def relay(stream: ReplyStream, scope: Scope, receive: Receive, send: Send) -> None:
    """Copy a streamed response to the client chunk by chunk, as the replica produces it.

    The client's pace sets the stream's: ``send`` waits while the socket's buffer is full, and
    the replica gets no credit meanwhile. A client that goes away closes the stream, which
    cancels it at the replica. A stream that fails midway ends early where the client can tell:
    an SSE stream gets an ``error`` event, any other stream is cut off before its last chunk."""
    items = await stream.next_batch()  # a stream begins with its head
    head: HTTPResult = items[0]
    await send({"type": "http.response.start", "status": head.status, "headers": list(head.headers)})
    gone = asyncio.get_running_loop().create_task(disconnected(receive))
    gone.add_done_callback(lambda _: stream.close(ClientDisconnectedError()))
    try:
        body = items[1:]
        while True:
            for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            body = await stream.next_batch()
            if not body:
                break
    except ClientDisconnectedError:
        logger.debug("Client %s went away from %s; stream cancelled.", client(scope), scope["path"])
        return
    except Exception as exc:
        logger.warning(
            "The stream of %s failed midway: %s: %s", scope["path"], type(exc).__name__, exc
        )
        if not _is_event_stream(head.headers):
            return  # uvicorn closes the connection: the client sees the body end early
        event = json.dumps({"error": type(exc).__name__, "message": str(exc)})
        await send({"type": "http.response.body",
                    "body": f"event: error\ndata: {event}\n\n".encode(), "more_body": True})
    finally:
        gone.cancel()
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _is_event_stream(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"content-type":
            return value.split(b";")[0].strip().lower() == b"text/event-stream"
    return False
