"""Both ends of a streamed reply, without processes: the credit window, the end of a stream
however it comes, and when an HTTP response streams rather than goes whole."""

from __future__ import annotations

import asyncio
import pickle

import pytest

from modelplex._messages import Chunk, HTTPResult, Result
from modelplex._data.replies import CREDIT_EVERY, WINDOW, ReplyStream
from modelplex._replica.outbox import HTTPSink, Outbox, pump

from tests.fakes import settle

from tests.fakes import FakeConn


def test_an_outbox_runs_at_most_a_window_ahead_of_its_reader():
    async def main():
        conn = FakeConn()
        outbox = Outbox(conn, 7)
        producer = asyncio.ensure_future(pump(iter_async(range(WINDOW * 3)), outbox.put))
        await settle(50)
        assert len(conn.sent) == WINDOW and not producer.done()
        outbox.credit(CREDIT_EVERY)
        await settle(50)
        assert len(conn.sent) == WINDOW + CREDIT_EVERY
        while not producer.done():  # the reader keeps up from here
            outbox.credit(WINDOW)
            await asyncio.sleep(0)
        assert [pickle.loads(c.payload) for c in conn.sent] == list(range(WINDOW * 3))
        assert all(isinstance(c, Chunk) and c.request_id == 7 for c in conn.sent)

    asyncio.run(main())


async def iter_async(items):
    for item in items:
        yield item


def test_pump_closes_a_generator_when_its_reader_fails():
    closed = []

    def sync_gen():
        try:
            yield from range(100)
        finally:
            closed.append("sync")

    async def async_gen():
        try:
            for i in range(100):
                yield i
        finally:
            closed.append("async")

    async def put(item):
        if item == 3:
            raise ConnectionError("reader gone")

    async def main():
        for gen in (sync_gen(), async_gen()):
            with pytest.raises(ConnectionError):
                await pump(gen, put)

    asyncio.run(main())
    assert closed == ["sync", "async"]


def make_stream():
    credits, cancels, ends = [], [], []
    stream = ReplyStream(credits.append, lambda: cancels.append(True))
    stream.on_end = lambda: ends.append(True)
    return stream, credits, cancels, ends


def test_a_reply_stream_returns_credit_in_steps_and_delivers_items_before_its_end():
    async def main():
        stream, credits, _, ends = make_stream()
        for i in range(CREDIT_EVERY - 1):
            stream.push(pickle.dumps(i))
        assert await stream.next_batch() == list(range(CREDIT_EVERY - 1)) and credits == []
        stream.push(pickle.dumps("x"))
        assert await stream.next_batch() == ["x"] and credits == [CREDIT_EVERY]
        stream.push(pickle.dumps("last"))
        stream.finish(Result(1, True, pickle.dumps(None)))
        assert ends == [True]
        assert await stream.next_batch() == ["last"]
        assert await stream.next_batch() == []
        assert await stream.next_batch() == []

    asyncio.run(main())


def test_a_failed_stream_raises_after_its_items_and_a_closed_one_cancels_once():
    async def main():
        stream, _, cancels, ends = make_stream()

        def decode_end(result):
            if not result.ok:
                raise pickle.loads(result.payload)

        stream.decode_end = decode_end
        stream.push(pickle.dumps(1))
        stream.finish(Result(1, False, pickle.dumps(RuntimeError("midway"))))
        assert await stream.next_batch() == [1]
        with pytest.raises(RuntimeError, match="midway"):
            await stream.next_batch()
        assert cancels == [] and ends == [True]

        stream, _, cancels, ends = make_stream()
        waiting = asyncio.ensure_future(stream.next_batch())
        await asyncio.sleep(0)
        stream.close()
        stream.close()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert cancels == [True] and ends == [True]
        stream.finish(Result(1, True, b""))  # a late end changes nothing
        assert ends == [True]

    asyncio.run(main())


def test_an_http_body_in_one_message_goes_whole_and_one_in_pieces_streams():
    async def main():
        conn, whole = FakeConn(), []
        sink = HTTPSink(Outbox(conn, 1), whole.append)
        await sink.send({"type": "http.response.start", "status": 201, "headers": [(b"a", b"b")]})
        await sink.send({"type": "http.response.body", "body": b"all"})
        assert whole == [HTTPResult(201, ((b"a", b"b"),), b"all")] and conn.sent == []

        conn, whole = FakeConn(), []
        outbox = Outbox(conn, 2)
        sink = HTTPSink(outbox, whole.append)
        await sink.send({"type": "http.response.start", "status": 200, "headers": []})
        await sink.send({"type": "http.response.body", "body": b"1", "more_body": True})
        await sink.send({"type": "http.response.body", "body": b"2", "more_body": True})
        await sink.send({"type": "http.response.body", "body": b"", "more_body": False})
        assert whole == [] and outbox.answered and sink.complete
        items = [pickle.loads(m.payload) for m in conn.sent if isinstance(m, Chunk)]
        assert items == [HTTPResult(200, (), b""), b"1", b"2"]
        assert isinstance(conn.sent[-1], Result) and conn.sent[-1].ok

    asyncio.run(main())


def test_the_window_counts_bytes_and_a_waiting_reader_never_deadlocks_it():
    """Small chunks the reader took without crediting yet, then a big one: the reader's wait
    must not leave the replica waiting too."""
    sizes = [10] * 5 + [3 << 20, 3 << 20, 3 << 20, 10]

    async def main():
        conn = FakeConn()
        outbox = Outbox(conn, 1)
        stream = ReplyStream(outbox.credit, lambda: None)

        async def relay():  # what the connection would carry, chunk by chunk
            sent = 0
            while sent < len(sizes):
                await asyncio.sleep(0)
                for message in conn.sent[sent:]:
                    stream.push(message.payload)
                sent = len(conn.sent)

        async def produce():
            for size in sizes:
                await outbox.put(b"x" * size)
            stream.finish(Result(1, True, pickle.dumps(None)))

        got = []

        async def consume():
            while batch := await stream.next_batch():
                got.extend(len(item) for item in batch)

        await asyncio.wait_for(asyncio.gather(relay(), produce(), consume()), 5)
        assert got == sizes

        conn = FakeConn()
        outbox = Outbox(conn, 2)
        producer = asyncio.ensure_future(pump(iter_async([b"x" * (3 << 20)] * 4), outbox.put))
        await settle(50)
        assert len(conn.sent) == 2  # 6 MiB out: past the 4 MiB window, so it waits
        producer.cancel()

    asyncio.run(main())
