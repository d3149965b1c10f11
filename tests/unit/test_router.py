"""The router's async shell over real sockets, with replicas faked in this process: what it
does when a replica's connection dies between placement and write."""

from __future__ import annotations

import asyncio
import pickle

import pytest

from modelplex._errors import ReplicaDiedError
from modelplex._messages import (
    Call,
    DeploymentID,
    ModelsUpdate,
    ReplicaInfo,
    ReplicaSet,
    Result,
    Touch,
)
from modelplex._router import Router
from modelplex._routing import rendezvous_order
from modelplex._transport import ConnectionClosed, new_secret, start_server

SECRET = new_secret()
DEPLOYMENT = DeploymentID("app", "d")


class Directory:
    """Publishes one replica set, then holds the long poll open."""

    def __init__(self, replicas: list[ReplicaInfo]) -> None:
        self._set = ReplicaSet(DEPLOYMENT, 1, tuple(replicas))

    async def watch(self, deployment_id, known_version):
        if known_version != self._set.version:
            return self._set
        await asyncio.Event().wait()


async def fake_replica(name: str):
    """Answers every call with its own name, after reporting that it holds nothing."""

    async def handler(conn):
        conn.send_nowait(ModelsUpdate(name, 1, {}, (), True))
        while True:
            call = await conn.recv()
            if isinstance(call, Call):
                conn.send_nowait(Result(call.request_id, True, pickle.dumps(name)))

    server = await start_server(handler, secret=SECRET)
    return server, ReplicaInfo(name, server.address, 5)


@pytest.fixture
async def make_router():
    made = []

    async def make(*names: str) -> Router:
        servers, infos = zip(*[await fake_replica(name) for name in names])
        router = Router(DEPLOYMENT, Directory(list(infos)), secret=SECRET)
        made.append((router, servers))
        await router.wait_ready(timeout_s=5)
        return router

    yield make
    for router, servers in made:
        await router.close()
        for server in servers:
            await server.close()


def break_writes(router: Router, replica_id: str) -> None:
    """The connection is gone but the reader has not noticed yet: the next write fails."""

    def refuse(message):
        raise ConnectionClosed("gone")

    router._replicas[replica_id].conn.send_nowait = refuse


async def test_a_call_that_could_not_be_written_goes_to_another_replica(make_router):
    router = await make_router("a", "b")
    home = rendezvous_order("m", ["a", "b"])[0]
    other = "b" if home == "a" else "a"
    break_writes(router, home)
    assert await router.call("__call__", model_id="m") == other
    assert home not in router._replicas  # failed, so nothing else is sent there
    assert await router.call("__call__", model_id="m") == other


async def test_the_retries_are_bounded(make_router):
    router = await make_router("a", "b", "c")
    for name in "abc":
        break_writes(router, name)
    with pytest.raises(ReplicaDiedError, match="connection lost"):
        await asyncio.wait_for(router.call("__call__", model_id="m"), 5)


async def test_requests_waiting_on_a_busy_holder_remind_it_of_their_model():
    """The holder's LRU must see demand that is queued at the router, not only what runs."""
    release = asyncio.Event()
    touches: list[str] = []

    async def holder(conn):
        conn.send_nowait(ModelsUpdate("h", 1, {"m": 0.5}, (), True))
        while True:
            message = await conn.recv()
            if isinstance(message, Touch):
                touches.append(message.model_id)
            elif isinstance(message, Call):
                asyncio.ensure_future(answer_when_released(conn, message))

    async def answer_when_released(conn, call):
        await release.wait()
        conn.send_nowait(Result(call.request_id, True, pickle.dumps("h")))

    server = await start_server(holder, secret=SECRET)
    router = Router(
        DEPLOYMENT,
        Directory([ReplicaInfo("h", server.address, 1)]),  # one slot: the second call waits
        secret=SECRET,
    )
    try:
        await router.wait_ready(timeout_s=5)
        # Whichever is placed first takes the one slot; the other waits for the busy holder.
        first = asyncio.ensure_future(router.call("__call__", model_id="m"))
        second = asyncio.ensure_future(router.call("__call__", model_id="m"))
        for _ in range(100):
            if touches:
                break
            await asyncio.sleep(0.01)
        assert touches and set(touches) == {"m"}
        assert len(touches) <= 4  # rate-limited, not one per tick
        release.set()
        assert await asyncio.wait_for(asyncio.gather(first, second), 5) == ["h", "h"]
    finally:
        await router.close()
        await server.close()
