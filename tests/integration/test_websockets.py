"""WebSockets through the proxy with the ``websockets`` client over real sockets: FastAPI and
Starlette ``@app.websocket`` routes in replica processes, the model id header of the upgrade
request placing the socket on a holder, close codes both ways, and the model in use while the
socket is open. One instance serves the module."""

from __future__ import annotations

import asyncio
import os

import pytest
import websockets
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute

import modelplex as serve

from ..conftest import start_on_a_free_port, wait_until

H = "serve_multiplexed_model_id"

api = FastAPI()


@serve.deployment(num_replicas=2)
@serve.ingress(api)
class Chat:
    def __init__(self, events: str) -> None:
        self.events = events

    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> str:
        return f"model-{model_id}"

    @api.websocket("/ws")
    async def chat(self, websocket: WebSocket) -> None:
        await websocket.accept()
        model = await self.get_model(serve.get_multiplexed_model_id())
        await websocket.send_json({"model": model, "pid": os.getpid()})
        try:
            while True:
                text = await websocket.receive_text()
                if text.startswith("close "):
                    _, code, reason = text.split(" ", 2)
                    await websocket.close(code=int(code), reason=reason)
                    return
                await websocket.send_text(text.upper())
        except WebSocketDisconnect as exc:
            with open(self.events, "a") as f:
                f.write(f"disconnect {exc.code}\n")

    @api.websocket("/refuse")
    async def refuse(self, websocket: WebSocket) -> None:
        await websocket.close(code=1008)


async def echo_bytes(websocket) -> None:
    await websocket.accept()
    async for data in websocket.iter_bytes():
        await websocket.send_bytes(data[::-1])


@serve.deployment
@serve.ingress(Starlette(routes=[WebSocketRoute("/bytes", echo_bytes)]))
class Raw:
    pass


@serve.deployment
class Plain:
    def __call__(self, request) -> str:
        return "no sockets here"


@pytest.fixture(scope="module")
def ws_serve(tmp_path_factory, cluster_options):
    events = str(tmp_path_factory.mktemp("ws") / "events")
    instance = start_on_a_free_port(**cluster_options)
    serve.run(Chat.bind(events), name="chat", route_prefix="/chat")
    serve.run(Raw.bind(), name="raw", route_prefix="/raw")
    serve.run(Plain.bind(), name="plain", route_prefix="/plain")
    try:
        yield f"ws://127.0.0.1:{instance.port}", events
    finally:
        serve.shutdown()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def test_a_socket_goes_to_a_holder_of_its_model_and_talks_both_ways(ws_serve):
    url, _ = ws_serve

    async def session(model: str) -> tuple[dict, list[str]]:
        async with websockets.connect(f"{url}/chat/ws", additional_headers={H: model}) as ws:
            hello = __import__("json").loads(await ws.recv())
            for i in range(100):  # more than a credit window, sent before any is read
                await ws.send(f"m{i}")
            replies = [await ws.recv() for _ in range(100)]
        return hello, replies

    hello, replies = run(session("a"))
    assert hello["model"] == "model-a" and replies == [f"M{i}" for i in range(100)]
    assert {run(session("a"))[0]["pid"] for _ in range(3)} == {hello["pid"]}


def test_close_codes_cross_both_ways(ws_serve):
    url, events = ws_serve

    async def server_closes() -> tuple[int, str]:
        async with websockets.connect(f"{url}/chat/ws", additional_headers={H: "b"}) as ws:
            await ws.recv()
            await ws.send("close 4002 see you")
            with pytest.raises(websockets.ConnectionClosed) as info:
                await ws.recv()
        return info.value.rcvd.code, info.value.rcvd.reason

    assert run(server_closes()) == (4002, "see you")

    async def client_closes() -> None:
        async with websockets.connect(f"{url}/chat/ws", additional_headers={H: "b"}) as ws:
            await ws.recv()
            await ws.close(code=4001, reason="done")

    run(client_closes())
    wait_until(lambda: "disconnect 4001" in lines(events), timeout=10)


def test_the_model_is_in_use_while_the_socket_is_open(ws_serve):
    url, _ = ws_serve

    def in_use(model: str) -> int:
        return sum(m.in_use for m in serve.list_models("chat") if m.model_id == model)

    async def hold() -> None:
        async with websockets.connect(f"{url}/chat/ws", additional_headers={H: "held"}) as ws:
            await ws.recv()
            await asyncio.to_thread(wait_until, lambda: in_use("held") == 1, 10)
            await ws.send("still here")
            assert await ws.recv() == "STILL HERE"
            assert await asyncio.to_thread(in_use, "held") == 1

    run(hold())
    wait_until(lambda: in_use("held") == 0, timeout=10)


def test_a_starlette_socket_and_the_sockets_that_are_refused(ws_serve):
    url, _ = ws_serve

    async def raw() -> bytes:
        async with websockets.connect(f"{url}/raw/bytes") as ws:
            await ws.send(b"\x01\x02\x03")
            return await ws.recv()

    assert run(raw()) == b"\x03\x02\x01"
    for path in ("/nowhere", "/chat/refuse", "/plain"):
        async def refused() -> None:
            async with websockets.connect(f"{url}{path}"):
                pass

        with pytest.raises(websockets.InvalidStatus) as info:
            run(refused())
        assert info.value.response.status_code == 403, path
