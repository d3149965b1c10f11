"""The authenticated pickle channel, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import inspect
import logging
import pathlib
import pickle
import time

import pytest
import uvloop

from modelplex._data.channel import (
    MAGIC,
    MAX_FRAME_BYTES,
    AuthenticationError,
    ConnectionClosed,
    encode_frame,
    new_secret,
)
from modelplex._data.transport import Connection, adopt, connect, start_server

SECRET = new_secret()


# ---------------------------------------------------------------- helpers


async def echo(conn: Connection) -> None:
    while True:
        await conn.send(await conn.recv())


class Recorder:
    """A handler that keeps every connection it is given and everything it receives."""

    def __init__(self) -> None:
        self.conns: list[Connection] = []
        self.received: list[object] = []
        self.ended = asyncio.Event()
        self.error: BaseException | None = None

    async def __call__(self, conn: Connection) -> None:
        self.conns.append(conn)
        try:
            while True:
                self.received.append(await conn.recv())
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.ended.set()


def _spring(path: str) -> str:
    """What the trap runs when unpickled: leave evidence on disk."""
    pathlib.Path(path).touch()
    return "sprung"


class Trap:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (_spring, (self.path,))


def _explode() -> None:
    raise ValueError("cannot be rebuilt here")


class FailsToUnpickle:
    def __reduce__(self):
        return (_explode, ())


def raw_frame(obj: object) -> bytes:
    payload = pickle.dumps(obj, protocol=5)
    return len(payload).to_bytes(8, "big") + payload


async def read_until_eof(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it hangs up (a reset counts as hanging up)."""
    data = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def transport_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "modelplex.transport" and r.levelno == logging.WARNING
    ]


# ---------------------------------------------------------------- round trips


async def test_round_trip_objects():
    class Local:  # defined here, so it can only travel by value
        def __init__(self, x):
            self.x = x

        def __eq__(self, other):
            return type(other).__name__ == "Local" and other.x == self.x

    objects = [
        None, 0, -(2**70), 3.5, "héllo", b"\x00\xff", bytearray(b"ab"), (1, (2, [3])),
        {"a": {1, 2}, "b": frozenset({3})}, ValueError("boom"), Local(7), list(range(1000)),
    ]
    server = await start_server(echo, secret=SECRET)
    conn = await connect(server.address, secret=SECRET)
    try:
        for obj in objects:
            await conn.send(obj)
            back = await conn.recv()
            if isinstance(obj, Exception):
                assert type(back) is ValueError and back.args == obj.args
            else:
                assert back == obj and type(back).__name__ == type(obj).__name__
        await conn.send(lambda v: v * 3)
        assert (await conn.recv())(5) == 15
        assert conn.peer == "%s:%d" % server.address
    finally:
        conn.close()
        await server.close()


async def test_large_payload():
    blob = bytes(range(256)) * (20 * 1024 * 1024 // 256)
    server = await start_server(echo, secret=SECRET)
    conn = await connect(server.address, secret=SECRET)
    try:
        await conn.send(blob)
        assert await conn.recv() == blob
    finally:
        conn.close()
        await server.close()


async def test_classes_of_main_travel_by_value(monkeypatch):
    """The peer's ``__main__`` is another module: such objects must not go by reference."""
    import sys

    class Job:
        def __init__(self, n):
            self.n = n

    Job.__module__ = "__main__"
    Job.__qualname__ = "Job"
    monkeypatch.setattr(sys.modules["__main__"], "Job", Job, raising=False)
    header, data = encode_frame(Job(3), MAX_FRAME_BYTES)
    assert int.from_bytes(header, "big") == len(data)
    monkeypatch.delattr(sys.modules["__main__"], "Job")  # as in a peer process
    assert pickle.loads(data).n == 3


async def test_frames_of_one_turn_leave_in_one_write():
    server = await start_server(echo, secret=SECRET)
    conn = await connect(server.address, secret=SECRET)
    writes = []
    real_write = conn._transport.write
    conn._transport.write = lambda data: (writes.append(len(data)), real_write(data))
    try:
        for i in range(10):
            conn.send_nowait(i)
        assert writes == []  # queued until the end of this turn of the loop
        assert [await conn.recv() for _ in range(10)] == list(range(10))
        assert len(writes) == 1
    finally:
        conn.close()
        await server.close()


async def test_concurrent_senders_never_interleave_frames():
    recorder = Recorder()
    server = await start_server(recorder, secret=SECRET)
    conn = await connect(server.address, secret=SECRET)
    senders, per_sender = 40, 50

    async def sender(i: int) -> None:
        for seq in range(per_sender):
            # Mixed sizes, some over the write buffer's high-water mark so send() drains.
            size = (i * 7919 + seq * 104729) % 200_000
            body = bytes([i]) * size
            if seq % 3:
                await conn.send((i, seq, body))
            else:
                conn.send_nowait((i, seq, body))
                await asyncio.sleep(0)

    try:
        await asyncio.gather(*(sender(i) for i in range(senders)))
        conn.close()
        await asyncio.wait_for(recorder.ended.wait(), 10)
    finally:
        await server.close()

    assert isinstance(recorder.error, ConnectionClosed)
    assert len(recorder.received) == senders * per_sender
    seen: dict[int, list[int]] = {}
    for i, seq, body in recorder.received:
        assert body == bytes([i]) * len(body)
        seen.setdefault(i, []).append(seq)
    assert seen == {i: list(range(per_sender)) for i in range(senders)}


async def test_unpicklable_object_raises_and_connection_stays_usable():
    server = await start_server(echo, secret=SECRET)
    conn = await connect(server.address, secret=SECRET)
    try:
        with pytest.raises(TypeError):
            await conn.send((x for x in ()))  # generators do not pickle
        with pytest.raises(TypeError):
            conn.send_nowait((x for x in ()))
        await conn.send("still fine")
        assert await conn.recv() == "still fine"
    finally:
        conn.close()
        await server.close()


async def test_object_that_fails_to_unpickle_raises_its_error_and_stream_stays_in_sync():
    received: list[object] = []

    async def tolerant(c: Connection) -> None:
        while True:
            try:
                received.append(await c.recv())
            except ValueError as exc:
                received.append(f"error: {exc}")

    server = await start_server(tolerant, secret=SECRET)
    conn = await connect(server.address, secret=SECRET)
    try:
        await conn.send(1)
        await conn.send(FailsToUnpickle())
        await conn.send(2)
        deadline = time.monotonic() + 5
        while len(received) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert received == [1, "error: cannot be rebuilt here", 2]
    finally:
        conn.close()
        await server.close()


# ---------------------------------------------------------------- authentication


async def test_wrong_secret_is_refused_on_both_sides(caplog):
    caplog.set_level(logging.DEBUG, logger="modelplex.transport")
    recorder = Recorder()
    server = await start_server(recorder, secret=SECRET)
    other = new_secret()
    try:
        with pytest.raises(AuthenticationError):
            await connect(server.address, secret=other)
        await asyncio.sleep(0.05)
        assert recorder.conns == []
    finally:
        await server.close()
    warnings = transport_warnings(caplog)
    assert len(warnings) == 1 and "127.0.0.1:" in warnings[0]
    text = caplog.text
    for secret in (SECRET, other):
        assert secret.hex() not in text and repr(secret) not in text


async def test_client_refuses_a_server_that_cannot_prove_the_secret():
    """A fake server that accepts any answer but does not know the secret."""
    got: list[bytes] = []

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(MAGIC + b"n" * 32)
        got.append(await reader.readexactly(len(MAGIC) + 64))
        writer.write(b"\x00" * 32)
        writer.write(raw_frame("must never be read"))
        got.append(await reader.read())  # the client must hang up without sending a frame
        writer.close()

    fake = await asyncio.start_server(impostor, "127.0.0.1", 0)
    try:
        with pytest.raises(AuthenticationError):
            await connect(fake.sockets[0].getsockname()[:2], secret=SECRET)
        for _ in range(100):
            if len(got) == 2:
                break
            await asyncio.sleep(0.01)
        assert got[0].startswith(MAGIC) and got[1] == b""
    finally:
        fake.close()
        await fake.wait_closed()


async def test_client_refuses_a_peer_that_is_not_modelplex():
    async def stranger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"x" * 64)
        await reader.read()
        writer.close()

    fake = await asyncio.start_server(stranger, "127.0.0.1", 0)
    try:
        with pytest.raises(AuthenticationError):
            await connect(fake.sockets[0].getsockname()[:2], secret=SECRET)
    finally:
        fake.close()
        await fake.wait_closed()


@pytest.mark.parametrize("how", ["immediately", "after_greeting", "after_bad_proof"])
async def test_raw_pickle_without_handshake_is_never_unpickled(tmp_path, caplog, how):
    # The trap is real: unpickling it does create the file.
    witness = tmp_path / "witness"
    assert pickle.loads(pickle.dumps(Trap(witness))) == "sprung" and witness.exists()

    evidence = tmp_path / "evidence"
    frame = raw_frame(Trap(evidence))
    recorder = Recorder()
    server = await start_server(recorder, secret=SECRET, handshake_timeout_s=2.0)
    try:
        reader, writer = await asyncio.open_connection(*server.address)
        local = "%s:%d" % writer.get_extra_info("sockname")[:2]
        if how == "immediately":
            writer.write(frame)
        else:
            greeting = await reader.readexactly(len(MAGIC) + 32)
            assert greeting.startswith(MAGIC)
            if how == "after_greeting":
                writer.write(frame)
            else:  # the right prefix, a wrong proof, then a frame pipelined behind it
                writer.write(MAGIC + b"\x00" * 32 + b"\x01" * 32 + frame * 4)
        started = time.monotonic()
        await read_until_eof(reader)
        assert time.monotonic() - started < 1.5  # refused at once, not by the timeout
        writer.close()
        await asyncio.sleep(0.05)
    finally:
        await server.close()
    assert not evidence.exists()
    assert recorder.conns == [] and recorder.received == []
    warnings = transport_warnings(caplog)
    assert len(warnings) == 1 and local in warnings[0]


@pytest.mark.parametrize("sends", [b"", MAGIC])
async def test_silent_peer_is_dropped_after_handshake_timeout(caplog, sends):
    recorder = Recorder()
    server = await start_server(recorder, secret=SECRET, handshake_timeout_s=0.3)
    try:
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(sends)
        started = time.monotonic()
        data = await read_until_eof(reader, timeout=5.0)
        elapsed = time.monotonic() - started
        writer.close()
    finally:
        await server.close()
    assert data.startswith(MAGIC) and len(data) == len(MAGIC) + 32
    assert 0.2 < elapsed < 3.0
    assert recorder.conns == []
    assert any("handshake" in w for w in transport_warnings(caplog))


async def test_connect_times_out_on_a_server_that_never_greets():
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    fake = await asyncio.start_server(mute, "127.0.0.1", 0)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await connect(fake.sockets[0].getsockname()[:2], secret=SECRET, timeout_s=0.2)
        assert time.monotonic() - started < 2.0
    finally:
        fake.close()
        await fake.wait_closed()


async def test_connect_refused_is_a_connection_error():
    server = await start_server(echo, secret=SECRET)
    address = server.address
    await server.close()
    with pytest.raises(ConnectionError):
        await connect(address, secret=SECRET, timeout_s=2.0)


def test_secret_must_be_bytes():
    assert len(new_secret()) == 32 and new_secret() != new_secret()
    with pytest.raises(ValueError):
        asyncio.run(connect(("127.0.0.1", 1), secret=b""))


# ---------------------------------------------------------------- frames


async def test_oversized_frame_closes_the_connection(caplog):
    recorder = Recorder()
    server = await start_server(recorder, secret=SECRET, max_frame_bytes=1000)
    conn = await connect(server.address, secret=SECRET)
    try:
        await conn.send(b"x" * 100)
        await conn.send(b"y" * 5000)
        await asyncio.wait_for(recorder.ended.wait(), 5)
        with pytest.raises(ConnectionClosed):
            await conn.recv()
    finally:
        conn.close()
        await server.close()
    assert recorder.received == [b"x" * 100]
    assert isinstance(recorder.error, ConnectionClosed)
    assert any("5" in w and "limit" in w for w in transport_warnings(caplog))


async def test_sending_over_the_limit_raises_before_writing():
    server = await start_server(echo, secret=SECRET)
    conn = await connect(server.address, secret=SECRET, max_frame_bytes=1000)
    try:
        with pytest.raises(ValueError, match="frame limit"):
            await conn.send(b"z" * 5000)
        await conn.send("small")
        assert await conn.recv() == "small"
    finally:
        conn.close()
        await server.close()


# ---------------------------------------------------------------- closing


async def test_eof_raises_connection_closed_after_pending_frames():
    async def say_two_things_and_hang_up(conn: Connection) -> None:
        conn.send_nowait("one")
        await conn.send("two")

    server = await start_server(say_two_things_and_hang_up, secret=SECRET)
    conn = await connect(server.address, secret=SECRET)
    try:
        assert await conn.recv() == "one"
        assert await conn.recv() == "two"
        with pytest.raises(ConnectionClosed):
            await conn.recv()
        assert conn.closed
        with pytest.raises(ConnectionClosed):
            await conn.recv()
        with pytest.raises(ConnectionClosed):
            conn.send_nowait("into the void")
        await asyncio.wait_for(conn.wait_closed(), 5)
    finally:
        conn.close()
        await server.close()


async def test_recv_after_the_peer_closes_raises_connection_closed():
    recorder = Recorder()
    server = await start_server(recorder, secret=SECRET)
    conn = await connect(server.address, secret=SECRET)
    try:
        await conn.send("hi")
        conn.close()
        assert conn.closed
        with pytest.raises(ConnectionClosed):
            await conn.recv()
        with pytest.raises(ConnectionClosed):
            await conn.send("after close")
        await asyncio.wait_for(recorder.ended.wait(), 5)
        await conn.wait_closed()
    finally:
        await server.close()
    assert recorder.received == ["hi"]
    assert isinstance(recorder.error, ConnectionClosed)
    assert recorder.conns[0].closed


async def test_close_wakes_a_pending_recv():
    server = await start_server(echo, secret=SECRET)
    conn = await connect(server.address, secret=SECRET)
    try:
        pending = asyncio.ensure_future(conn.recv())
        await asyncio.sleep(0.05)
        conn.close()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(pending, 5)
    finally:
        await server.close()


async def test_server_close_closes_live_connections():
    recorder = Recorder()
    stuck_cancelled = asyncio.Event()

    async def handler(conn: Connection) -> None:
        if not recorder.conns:
            await recorder(conn)  # ends when its connection closes
        else:
            try:
                await asyncio.Event().wait()  # ignores its connection entirely
            except asyncio.CancelledError:
                stuck_cancelled.set()
                raise

    server = await start_server(handler, secret=SECRET)
    first = await connect(server.address, secret=SECRET)
    await first.send("hello")
    second = await connect(server.address, secret=SECRET)
    half_open_reader, half_open_writer = await asyncio.open_connection(*server.address)
    await asyncio.sleep(0.05)

    await asyncio.wait_for(server.close(), 5)

    assert recorder.ended.is_set() and isinstance(recorder.error, ConnectionClosed)
    assert stuck_cancelled.is_set()
    for conn in (first, second):
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(conn.recv(), 5)
    assert (await read_until_eof(half_open_reader)).startswith(MAGIC)
    half_open_writer.close()
    with pytest.raises(ConnectionError):
        await connect(server.address, secret=SECRET, timeout_s=2.0)


async def test_handler_errors_are_logged_and_close_the_connection(caplog):
    async def broken(conn: Connection) -> None:
        await conn.recv()
        raise RuntimeError("handler bug")

    server = await start_server(broken, secret=SECRET)
    conn = await connect(server.address, secret=SECRET)
    try:
        await conn.send("trigger")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(conn.recv(), 5)
    finally:
        conn.close()
        await server.close()
    errors = [r for r in caplog.records if r.name == "modelplex.transport" and r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info[0] is RuntimeError
    assert "127.0.0.1:" in errors[0].getMessage()


# ---------------------------------------------------------------- the same on uvloop

ON_UVLOOP = [
    test_round_trip_objects,
    test_large_payload,
    test_concurrent_senders_never_interleave_frames,
    test_client_refuses_a_server_that_cannot_prove_the_secret,
    test_oversized_frame_closes_the_connection,
    test_eof_raises_connection_closed_after_pending_frames,
    test_recv_after_the_peer_closes_raises_connection_closed,
    test_close_wakes_a_pending_recv,
    test_server_close_closes_live_connections,
]


@pytest.mark.parametrize("scenario", ON_UVLOOP, ids=lambda f: f.__name__.removeprefix("test_"))
def test_on_uvloop(scenario, caplog):
    kwargs = {"caplog": caplog} if "caplog" in inspect.signature(scenario).parameters else {}
    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(scenario(**kwargs), 60))
    finally:
        loop.close()


@pytest.mark.parametrize("how", ["immediately", "after_bad_proof"])
def test_raw_pickle_is_never_unpickled_on_uvloop(tmp_path, caplog, how):
    loop = uvloop.new_event_loop()
    try:
        coro = test_raw_pickle_without_handshake_is_never_unpickled(tmp_path, caplog, how)
        loop.run_until_complete(coro)
    finally:
        loop.close()


async def test_a_detached_connection_carries_on_on_another_loop():
    """The replica greets a router on its control loop, then serves it on the user loop."""
    from modelplex._aio import LoopThread

    other = LoopThread("test-other-loop")
    adopted = asyncio.get_running_loop().create_future()

    async def carry_on(fd: int, peer: str) -> None:
        conn = await adopt(fd, peer)
        await conn.send(("adopted", await conn.recv()))
        await conn.send(("adopted", await conn.recv()))
        conn.close()

    async def greet(conn: Connection) -> None:
        conn.send_nowait("hello")
        fd = conn.detach()
        assert conn.closed
        await asyncio.wrap_future(other.submit(carry_on(fd, conn.peer)))
        adopted.set_result(True)

    server = await start_server(greet, secret=SECRET)
    client = await connect(server.address, secret=SECRET)
    try:
        assert await client.recv() == "hello"
        client.send_nowait(1)
        assert await client.recv() == ("adopted", 1)
        client.send_nowait(2)
        assert await client.recv() == ("adopted", 2)
        with pytest.raises(ConnectionClosed):
            await client.recv()
        assert await asyncio.wait_for(adopted, 5)
    finally:
        client.close()
        await server.close()
        other.stop()
