"""Streaming through real replicas: over HTTP (StreamingResponse, SSE, bare generators) and
through handles (``handle.options(stream=True)``), with disconnects, errors, backpressure and
models in use. The generators wait on files the tests create, so "the chunk arrived before the
generator finished" is checked without timing anything."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import socket
import threading
import time

import httpx
import pytest
import requests
from starlette.responses import StreamingResponse

import modelplex as serve
from modelplex.handle import DeploymentHandle

from ..conftest import wait_until
from .models import TrackedModel, read_events, record

H = "serve_multiplexed_model_id"


async def gate(path: str) -> None:
    """Wait until the test creates ``path``."""
    while not os.path.exists(path):
        await asyncio.sleep(0.01)


def open_gate(path: str) -> None:
    open(path, "w").close()


@serve.deployment(max_ongoing_requests=32)
class Streamer:
    def __init__(self, events: str) -> None:
        self.events = events

    async def __call__(self, request):
        q = request.query_params
        kind, tag = q.get("kind", "sse"), q.get("tag", "t")
        if kind == "sse":
            return StreamingResponse(self.sse(tag, q.get("gate", "")), media_type="text/event-stream")
        if kind == "sync":
            return StreamingResponse(self.sync_lines(tag, int(q.get("n", "3"))))
        if kind == "bare":
            return self.bare(tag, q.get("item", "json"))
        if kind == "fail":
            return StreamingResponse(self.failing(), media_type=q.get("media", "text/event-stream"))
        if kind == "big":
            return StreamingResponse(self.big(tag, int(q.get("n", "2000"))))
        return "plain"

    async def sse(self, tag: str, gate_path: str):
        try:
            yield "data: 0\n\n"
            if gate_path:
                await gate(gate_path)
            for i in range(1, 4):
                await asyncio.sleep(0.05)
                yield f"data: {i}\n\n"
        finally:
            record(self.events, f"closed {tag}")

    def sync_lines(self, tag: str, n: int):
        try:
            for i in range(n):
                time.sleep(0.05)
                yield f"line {i}\n"
        finally:
            record(self.events, f"closed {tag}")

    def bare(self, tag: str, item: str):
        try:
            for i in range(3):
                yield {"i": i} if item == "json" else f"{i};"
                time.sleep(0.05)
        finally:
            record(self.events, f"closed {tag}")

    async def failing(self):
        yield "data: 0\n\n"
        raise RuntimeError("the generator broke")

    async def big(self, tag: str, n: int):
        chunk = b"x" * 65536
        for i in range(n):
            record(self.events, f"produced {tag} {i}")
            yield chunk

    async def agen(self, n: int, fail: bool = False):
        for i in range(n):
            yield i
        if fail:
            raise RuntimeError("oopsies")

    def sgen(self, n: int, fail: bool = False):
        for i in range(n):
            yield i
        if fail:
            raise RuntimeError("oopsies")

    async def call_inner_generator(self, n: int):
        return self.agen(n)

    async def unary(self, n: int) -> int:
        return n

    async def endless(self, tag: str):
        try:
            i = 0
            while True:
                record(self.events, f"produced {tag} {i}")
                yield i
                i += 1
                await asyncio.sleep(0.001)
        finally:
            record(self.events, f"closed {tag}")


@pytest.fixture
def streamer(serve_instance, tmp_path):
    events = str(tmp_path / "events")
    handle = serve.run(Streamer.bind(events))
    return handle, events, serve_instance.url, tmp_path


def settled(read, quiet_s: float = 0.5, timeout_s: float = 30.0) -> int:
    """``read()`` once it has stopped changing for ``quiet_s``: where a producer paused (or,
    if it never pauses, where it finished)."""
    last, since, deadline = read(), time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, f"still changing after {timeout_s}s: {last}"
        time.sleep(0.05)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
    return last


def produced(events: str, tag: str) -> int:
    return sum(1 for line in read_events(events) if line.startswith(f"produced {tag} "))


# ---- HTTP -----------------------------------------------------------------------------------


def test_sse_chunks_arrive_as_they_are_produced(streamer):
    _, events, url, tmp = streamer
    gate_path = str(tmp / "go")
    with httpx.stream("GET", url, params={"gate": gate_path}, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        assert next(lines) == "data: 0"  # the generator is still waiting on the gate
        open_gate(gate_path)
        rest = [line for line in lines if line]
    assert rest == ["data: 1", "data: 2", "data: 3"]
    wait_until(lambda: "closed t" in read_events(events))


def test_sync_iterators_and_bare_generators_stream_over_http(streamer):
    _, events, url, _ = streamer
    r = requests.get(url, params={"kind": "sync", "n": "4"}, timeout=30)
    assert r.text == "line 0\nline 1\nline 2\nline 3\n"
    r = requests.get(url, params={"kind": "bare"}, timeout=30)  # Ray answers 500 here
    assert r.headers["content-type"] == "application/x-ndjson"
    assert [line for line in r.text.splitlines()] == ['{"i":0}', '{"i":1}', '{"i":2}']
    r = requests.get(url, params={"kind": "bare", "item": "str"}, timeout=30)
    assert r.headers["content-type"].startswith("text/plain") and r.text == "0;1;2;"
    assert requests.get(url, params={"kind": "plain"}, timeout=30).text == "plain"


def test_a_generator_that_raises_midway_ends_the_stream_where_the_client_sees_it(streamer):
    _, _, url, _ = streamer
    with httpx.stream("GET", url, params={"kind": "fail"}, timeout=30) as r:
        body = r.read().decode()
    assert body.startswith("data: 0\n\n")
    assert "event: error" in body and "the generator broke" in body  # SSE: an error event
    with pytest.raises(httpx.RemoteProtocolError):  # not SSE: the chunked body is cut off
        with httpx.stream("GET", url, params={"kind": "fail", "media": "text/plain"}, timeout=30) as r:
            r.read()
    assert requests.get(url, params={"kind": "plain"}, timeout=30).text == "plain"


@pytest.mark.parametrize("kind", ["sse", "sync", "bare"])
def test_a_client_that_goes_away_closes_the_generator_within_a_second(streamer, kind):
    _, events, url, tmp = streamer
    tag = f"gone-{kind}"
    params = {"kind": kind, "tag": tag, "n": "100000", "gate": str(tmp / "never")}
    with httpx.stream("GET", url, params=params, timeout=30) as r:
        next(r.iter_bytes())
    left = time.monotonic()
    wait_until(lambda: f"closed {tag}" in read_events(events), timeout=5,
               message="the generator's finally did not run")
    assert time.monotonic() - left < 1.0
    assert requests.get(url, params={"kind": "plain"}, timeout=30).text == "plain"


def test_a_slow_reader_pauses_the_generator(streamer):
    """2,000 chunks of 64 KiB (125 MiB); a client that reads the head and stops. The generator
    must stop within the credit window plus what the sockets buffer, not run to the end."""
    _, events, url, _ = streamer
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /?kind=big&tag=slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        wait_until(lambda: produced(events, "slow") > 0)
        paused = settled(lambda: produced(events, "slow"))  # all 2,000 if it never pauses
        assert paused < 400, f"{paused} chunks produced for a client that read none"
    # The client left: the paused stream is cancelled, and the replica keeps serving.
    assert requests.get(url, params={"kind": "plain"}, timeout=30).text == "plain"


# ---- handles ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["agen", "sgen"])
def test_handle_streams_with_for_outside_a_deployment(streamer, method):
    """Ray Serve's own handle-streaming cases."""
    handle, _, _, _ = streamer
    h = handle.options(stream=True)
    assert list(getattr(h, method).remote(5)) == [0, 1, 2, 3, 4]
    assert list(h.options(method_name=method).remote(3)) == [0, 1, 2]
    assert list(getattr(h, method).remote(0)) == []
    assert list(h.call_inner_generator.remote(2)) == [0, 1]
    gen = getattr(h, method).remote(2, fail=True)
    assert next(gen) == 0 and next(gen) == 1
    with pytest.raises(RuntimeError, match="oopsies"):
        next(gen)
    with pytest.raises(TypeError, match=r"'unary' .* but it did not return a generator"):
        next(h.unary.remote(0))
    with pytest.raises(TypeError, match=r"Method '\w+' returned a generator. You must use "
                                        r"`handle.options\(stream=True\)`"):
        getattr(handle, method).remote(5).result()
    assert h.options(stream=False).unary.remote(5).result() == 5


@serve.deployment
class Delegate:
    def __init__(self, streamer: DeploymentHandle) -> None:
        self.streamer = streamer.options(stream=True)

    async def __call__(self, request):
        return StreamingResponse(self.relay(int(request.query_params.get("n", "3"))),
                                 media_type="text/event-stream")

    async def relay(self, n: int):
        async for i in self.streamer.agen.remote(n):
            yield f"data: {i}\n\n"

    async def collect(self) -> list:
        h = self.streamer
        out = [[i async for i in h.agen.remote(3)], [i async for i in h.sgen.remote(2)]]
        gen = h.agen.remote(1, fail=True)
        out.append(await gen.__anext__())
        try:
            await gen.__anext__()
        except RuntimeError as exc:
            out.append(str(exc))
        try:
            await h.unary.remote(0).__anext__()
        except TypeError as exc:
            out.append("TypeError")
        try:
            for _ in h.agen.remote(1):
                pass
        except RuntimeError as exc:
            out.append("no for here" if "async for" in str(exc) else str(exc))
        return out


def test_streams_between_deployments_with_async_for(serve_instance, tmp_path):
    handle = serve.run(Delegate.bind(Streamer.bind(str(tmp_path / "events"))))
    assert handle.collect.remote().result() == [
        [0, 1, 2], [0, 1], 0, "oopsies", "TypeError", "no for here"]
    with httpx.stream("GET", serve_instance.url, params={"n": "4"}, timeout=30) as r:
        assert [line for line in r.iter_lines() if line] == [f"data: {i}" for i in range(4)]


def test_a_handle_stream_that_is_cancelled_or_dropped_closes_the_generator(streamer):
    handle, events, _, _ = streamer
    h = handle.options(stream=True)
    gen = h.endless.remote("cancelled")
    assert next(gen) == 0
    gen.cancel()
    wait_until(lambda: "closed cancelled" in read_events(events), timeout=5)
    with pytest.raises(concurrent.futures.CancelledError):  # as a cancelled .result() raises
        for _ in gen:
            pass
    gen = h.endless.remote("dropped")
    assert next(gen) == 0
    del gen
    wait_until(lambda: "closed dropped" in read_events(events), timeout=5)


def test_a_slow_handle_reader_holds_the_generator_to_the_credit_window(streamer):
    handle, events, _, _ = streamer
    gen = handle.options(stream=True).endless.remote("window")
    assert next(gen) == 0
    ahead = settled(lambda: produced(events, "window"))  # endless if it never pauses
    assert ahead <= 40, f"{ahead} items produced for a reader that took one"
    assert [next(gen) for _ in range(100)] == list(range(1, 101))  # and it resumes
    gen.cancel()


# ---- models in use ----------------------------------------------------------------------------


@serve.deployment(max_ongoing_requests=8, graceful_shutdown_wait_loop_s=0.1,
                  graceful_shutdown_timeout_s=20)
class ModelStreamer:
    def __init__(self, events: str, gate_dir: str, version: str = "v1") -> None:
        self.events = events
        self.gate_dir = gate_dir
        self.version = version

    @serve.multiplexed(max_num_models_per_replica=1)
    async def get_model(self, model_id: str) -> TrackedModel:
        record(self.events, f"load {model_id}")
        return TrackedModel(model_id, self.events)

    async def __call__(self, request):
        model = await self.get_model(serve.get_multiplexed_model_id())
        return StreamingResponse(self.tokens(model.model_id), media_type="text/event-stream")

    async def tokens(self, model_id: str):
        yield f"data: {model_id} {self.version} 0\n\n"
        await gate(os.path.join(self.gate_dir, model_id))
        yield f"data: {model_id} {self.version} 1\n\n"
        record(self.events, f"done {model_id}")


def test_a_model_is_not_unloaded_under_an_open_stream(serve_instance, tmp_path):
    events, url = str(tmp_path / "events"), serve_instance.url
    serve.run(ModelStreamer.bind(events, str(tmp_path)))
    other, b_started = {}, threading.Event()

    def stream_b():
        with httpx.stream("GET", url, headers={H: "b"}, timeout=30) as b:
            lines = b.iter_lines()
            other["b"] = [next(lines)]
            b_started.set()  # b is loaded, so a is out of the cache's index
            other["b"] += [line for line in lines if line]

    with httpx.stream("GET", url, headers={H: "a"}, timeout=30) as a:
        lines = a.iter_lines()
        assert next(lines) == "data: a v1 0"
        thread = threading.Thread(target=stream_b)  # the only slot is a's
        thread.start()
        assert b_started.wait(30)
        assert "load b" in read_events(events) and "del a" not in read_events(events)
        open_gate(str(tmp_path / "a"))
        assert [line for line in lines if line] == ["data: a v1 1"]
    open_gate(str(tmp_path / "b"))
    thread.join(30)
    assert other["b"] == ["data: b v1 0", "data: b v1 1"]
    seen = read_events(events)
    assert seen.index("done a") < seen.index("del a")


def test_a_stream_in_flight_finishes_before_a_redeploy_unloads_its_model(serve_instance, tmp_path):
    events, url = str(tmp_path / "events"), serve_instance.url
    serve.run(ModelStreamer.bind(events, str(tmp_path), "v1"))
    with httpx.stream("GET", url, headers={H: "m"}, timeout=30) as r:
        lines = r.iter_lines()
        assert next(lines) == "data: m v1 0"
        rollout = threading.Thread(  # v1 drains its stream, then stops
            target=serve.run, args=(ModelStreamer.bind(events, str(tmp_path), "v2"),))
        rollout.start()
        wait_until(lambda: any(  # v1 is draining while its stream is open
            r.state == "stopping"
            for r in serve.status().applications["default"].deployments["ModelStreamer"].replicas
        ), message="the rollout never started stopping v1")
        open_gate(str(tmp_path / "m"))
        assert [line for line in lines if line] == ["data: m v1 1"]
    rollout.join(30)
    wait_until(lambda: "del m" in read_events(events), message="v1's model was never unloaded")
    seen = read_events(events)
    assert seen.index("done m") < seen.index("del m")


def test_the_docs_streaming_example_runs(serve_instance, capsys):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    text = open(os.path.join(root, "docs", "apps.md")).read()
    section = text.split("## Streaming", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    exec(compile(block, "docs/apps.md", "exec"), {"__name__": "docs"})  # shipped by value
    assert "['word 0', 'word 1', 'word 2']" in capsys.readouterr().out
    with httpx.stream("GET", serve_instance.url, headers={H: "en"}, timeout=30) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines == [f"data: EN token {i}" for i in range(3)]


from fastapi import BackgroundTasks, FastAPI  # noqa: E402

streams_api = FastAPI()


@serve.deployment
@serve.ingress(streams_api)
class IngressStreamer:
    def __init__(self, events: str) -> None:
        self.events = events

    @streams_api.get("/tokens/{tag}")
    async def tokens(self, tag: str, sync: bool = False):
        body = self.sync_tokens(tag) if sync else self.async_tokens(tag)
        return StreamingResponse(body, media_type="text/event-stream")

    async def async_tokens(self, tag: str):
        try:
            for i in range(100000):
                yield f"data: {i}\n\n"
                await asyncio.sleep(0.01)
        finally:
            record(self.events, f"closed {tag}")

    def sync_tokens(self, tag: str):
        try:
            for i in range(100000):
                yield f"data: {i}\n\n"
                time.sleep(0.01)
        finally:
            record(self.events, f"closed {tag}")


@pytest.mark.parametrize("sync", [False, True])
def test_an_ingress_stream_is_closed_when_its_client_goes_away(serve_instance, tmp_path, sync):
    events = str(tmp_path / "events")
    serve.run(IngressStreamer.bind(events))
    tag = f"ingress-{sync}"
    with httpx.stream("GET", f"{serve_instance.url}/tokens/{tag}", params={"sync": sync},
                      timeout=30) as r:
        assert next(r.iter_lines()) == "data: 0"
    left = time.monotonic()
    wait_until(lambda: f"closed {tag}" in read_events(events), timeout=5,
               message="the generator's finally did not run")
    assert time.monotonic() - left < 1.0


@serve.deployment(max_ongoing_requests=16)
class BatchedStreams:
    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.2)
    async def tokens(self, lengths: list[int]):
        for i in range(max(lengths)):
            yield [(i, len(lengths)) if i < n else StopIteration for n in lengths]


def test_a_batched_generator_streams_each_callers_items_through_handles(serve_instance):
    h = serve.run(BatchedStreams.bind()).options(stream=True)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        streams = list(pool.map(lambda n: list(h.tokens.remote(n)), [1, 2, 3, 4]))
    assert [[i for i, _ in items] for items in streams] == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3]]
    assert {size for items in streams for _, size in items} == {4}  # one batch of all four


from starlette.background import BackgroundTask  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402

background_api = FastAPI()


async def slow_background(events: str, tag: str) -> None:
    await gate(events + ".go")  # the test opens it once the client has its answer
    record(events, f"background {tag}")


@serve.deployment
class WithBackground:
    def __init__(self, events: str) -> None:
        self.events = events

    async def __call__(self, request):
        return PlainTextResponse(
            "answered", background=BackgroundTask(slow_background, self.events, "plain"))


@serve.deployment
@serve.ingress(background_api)
class IngressWithBackground:
    def __init__(self, events: str) -> None:
        self.events = events

    @background_api.get("/")
    async def root(self, tasks: BackgroundTasks):
        tasks.add_task(slow_background, self.events, "ingress")
        return "answered"


@pytest.mark.parametrize("app", [WithBackground, IngressWithBackground])
def test_background_tasks_run_after_the_client_has_its_answer(serve_instance, tmp_path, app):
    events = str(tmp_path / "events")
    serve.run(app.bind(events))
    r = requests.get(serve_instance.url, timeout=10)  # the background task is still waiting
    assert "answered" in r.text
    assert not any(line.startswith("background") for line in read_events(events))
    open_gate(events + ".go")
    wait_until(lambda: any(line.startswith("background") for line in read_events(events)))
