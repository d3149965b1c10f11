"""A WebSocket through the proxy: the client's socket carried both ways to the ingress app.

The upgrade request is routed like any request (route prefix, model id header), as a streamed
call whose reply is what the app sends (``websocket.accept``, ``websocket.send``,
``websocket.close``), relayed to the client as it comes. What the client sends goes up the
same stream (``Uplink``), within the window the replica's credit opens; the client's close
goes up too, so the app's ``receive`` raises ``WebSocketDisconnect(code=...)``, and the app
gets ``_GRACE_S`` to finish before the call is cancelled. A socket the app never accepted is
refused (403), as uvicorn refuses one; one that fails after it was accepted closes with 1011.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from .._data.replies import ReplyStream
from .._types import Receive, Scope, Send
from .access import Access

logger = logging.getLogger("modelplex.proxy")

_GRACE_S = 5.0  # after the client's close, how long the app may take to return
_INTERNAL_ERROR = 1011


async def refuse(send: Send, reason: str) -> None:
    """Close a socket before it is accepted: the client's handshake gets a 403."""
    logger.info("WebSocket refused: %s", reason)
    await send({"type": "websocket.close", "code": 1008, "reason": reason[:120]})


async def serve_socket(
    open_call: Callable[[], Awaitable[ReplyStream]],
    scope: Scope,
    receive: Receive,
    send: Send,
    access: Access | None,
) -> None:
    """Run one socket from ``open_call`` (the router's streamed call) to its end, and write its
    access line: 101 when the app accepted it, 403 when it did not, "-" if it failed first."""
    start, status = time.perf_counter(), 0
    try:
        try:
            stream = await open_call()
        except Exception as exc:
            logger.warning("WebSocket %s failed before it was accepted: %s: %s",
                           scope["path"], type(exc).__name__, exc)
            await send({"type": "websocket.close", "code": _INTERNAL_ERROR})
            status = 403
            return
        status = await _relay(stream, scope, receive, send)
    finally:
        if access is not None and not access.quiet:
            access.log({**scope, "method": "WEBSOCKET"}, status, time.perf_counter() - start)


async def _relay(stream: ReplyStream, scope: Scope, receive: Receive, send: Send) -> int:
    loop = asyncio.get_running_loop()
    up = loop.create_task(_up(stream, receive))
    accepted = closed = False
    try:
        while True:
            try:
                batch = await stream.next_batch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not up.done():  # the app failed, not the client gone
                    logger.warning("WebSocket %s failed: %s: %s", scope["path"],
                                   type(exc).__name__, exc)
                    if not closed:
                        await send({"type": "websocket.close", "code": _INTERNAL_ERROR})
                        closed = True
                break
            if not batch:
                break
            for message in batch:
                kind = message.get("type")
                if closed or up.done():
                    continue  # the client is gone: nobody to send it to
                try:
                    await send(message)
                except OSError:  # the client went away meanwhile
                    closed = True
                    continue
                except RuntimeError as exc:  # the app sent what a socket cannot in its state
                    logger.warning("WebSocket %s: %s", scope["path"], exc)
                    await _close_quietly(send, _INTERNAL_ERROR)
                    closed = True
                    continue
                accepted = accepted or kind == "websocket.accept"
                closed = closed or kind == "websocket.close"
        if not accepted and not closed:  # the app returned without a word: refuse
            await send({"type": "websocket.close", "code": 1000})
    finally:
        up.cancel()
        if not stream.finished:
            stream.close()
    return 101 if accepted else 403


async def _close_quietly(send: Send, code: int) -> None:
    try:
        await send({"type": "websocket.close", "code": code})
    except (OSError, RuntimeError):
        pass


async def _up(stream: ReplyStream, receive: Receive) -> None:
    """The client's messages up to the app, within the window; its close last, then the
    app has ``_GRACE_S`` to end before the stream is cancelled."""
    uplink = stream.uplink
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            size = len(message.get("bytes") or message.get("text") or b"")
            await uplink.send(message, size)
        elif kind == "websocket.disconnect":
            uplink.send_now({"type": kind, "code": message.get("code", 1005),
                             "reason": message.get("reason", "")})
            asyncio.get_running_loop().call_later(_GRACE_S, stream.close)
            return
