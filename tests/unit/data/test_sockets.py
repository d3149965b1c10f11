"""Both ends of a WebSocket's messages up to the app: the caller holds at most a window of them
unconsumed, and the replica's inbox credits them back as the app takes them."""

from __future__ import annotations

import asyncio

from modelplex._data.replies import CREDIT_EVERY, WINDOW, ReplyStream, Uplink
from modelplex._replica.sockets import SocketInbox


async def test_the_uplink_waits_for_credit_once_a_window_is_out():
    sent: list = []
    uplink = Uplink(sent.append)
    for i in range(WINDOW):
        await uplink.send({"type": "websocket.receive", "text": str(i)}, 1)
    blocked = asyncio.ensure_future(uplink.send({"type": "websocket.receive", "text": "x"}, 1))
    await asyncio.sleep(0)
    assert len(sent) == WINDOW and not blocked.done()
    uplink.credit(1)
    await asyncio.wait_for(blocked, 1)
    assert len(sent) == WINDOW + 1
    uplink.send_now({"type": "websocket.disconnect", "code": 1000})  # the last word never waits
    assert sent[-1]["type"] == "websocket.disconnect"


async def test_a_stream_that_ends_releases_a_waiting_sender():
    stream = ReplyStream(lambda n: None, lambda: None, lambda message: None)
    uplink = stream.uplink
    for _ in range(WINDOW):
        await uplink.send({}, 0)
    blocked = asyncio.ensure_future(uplink.send({}, 0))
    await asyncio.sleep(0)
    stream.fail(ConnectionError("gone"))
    await asyncio.wait_for(blocked, 1)
    assert uplink.closed


async def test_the_inbox_says_connect_first_and_credits_as_the_app_reads():
    credits: list[int] = []
    inbox = SocketInbox(credits.append)
    for i in range(CREDIT_EVERY):
        inbox.put({"type": "websocket.receive", "text": f"m{i}"})
    assert (await inbox.receive())["type"] == "websocket.connect"
    texts = [(await inbox.receive())["text"] for _ in range(CREDIT_EVERY)]
    assert texts == [f"m{i}" for i in range(CREDIT_EVERY)] and credits == [CREDIT_EVERY]
    waiting = asyncio.ensure_future(inbox.receive())
    await asyncio.sleep(0)
    assert not waiting.done()
    inbox.put({"type": "websocket.disconnect", "code": 4001})
    assert (await waiting) == {"type": "websocket.disconnect", "code": 4001}
    assert inbox.disconnected
    assert (await inbox.receive())["type"] == "websocket.disconnect"  # and so it stays
