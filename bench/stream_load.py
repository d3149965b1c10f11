"""Streams under load: time to first chunk and chunks per second, and the HTTP client.

``stream_load`` is transport-free, as ``bench.client.closed_loop`` is: ``open_stream(model_id)``
is an async iterable of pieces (the ``bytes`` an HTTP body arrives in, or the ``str`` items of
a handle's stream), so the HTTP client here and the handle client in ``bench.streaming``'s
ingress deployment measure the same way.

``concurrency`` workers each open a stream, read it to its end, check it and open the next,
until ``warmup + seconds`` have passed. Worker k starts k/concurrency of ``stagger_s`` late, so
the streams do not start and end in waves: once all have started, about ``concurrency`` streams
are always open, and a stream's first chunk competes with the others' chunks. Recorded:

- the time to first chunk (from opening a stream to its first piece) of each stream opened in
  the measured window, ``[warmup, warmup + seconds)``;
- the chunks that arrived in that window, over its length: chunks per second of all streams;
- errors: a stream that failed or whose body was not the expected one.

    python -m bench.stream_load < spec.json   # {"url", "concurrency", "chunks", "model_ids",
                                              #  "seconds", "warmup", "stagger_s"}
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, AsyncIterable, Callable, Sequence

from .client import HEADER, client_main, percentile, run_client_module

__all__ = ["LOAD_KEYS", "StreamResult", "expected_body", "read_stream", "run_stream_client",
           "sse_chunk", "stream_load", "stream_summary"]

OpenStream = Callable[[str], AsyncIterable[Any]]
LOAD_KEYS = ("concurrency", "chunks", "model_ids", "seconds", "warmup", "stagger_s")


def sse_chunk(i: int) -> str:
    """The ``i``-th chunk the benchmark's deployment yields: one server-sent event."""
    return f"data: {i}\n\n"


def expected_body(chunks: int) -> str:
    return "".join(sse_chunk(i) for i in range(chunks))


@dataclass(frozen=True)
class StreamResult:
    opened: float  # time.monotonic() when the stream was opened
    ttfb_s: float | None  # to its first piece; None if none came
    duration_s: float  # to its end (or its failure)
    error: str | None


async def read_stream(open_stream: OpenStream, model_id: str, expected: str,
                      arrivals: list[tuple[float, int]]) -> StreamResult:
    """Read one stream to its end; each piece's arrival time and the chunks (SSE events) it
    completed go to ``arrivals``."""
    opened = time.monotonic()
    first: float | None = None
    pieces: list[str] = []
    tail = ""
    error: str | None = None
    try:
        async for piece in open_stream(model_id):
            now = time.monotonic()
            if first is None:
                first = now
            text = piece.decode() if isinstance(piece, (bytes, bytearray)) else str(piece)
            # An event may straddle two pieces of an HTTP body: count its "\n\n" once, whole.
            arrivals.append((now, (tail + text).count("\n\n")))
            tail = text[-1:]
            pieces.append(text)
    except Exception as exc:  # the stream failed
        error = f"{type(exc).__name__}: {exc}"[:120]
    end = time.monotonic()
    if error is None and "".join(pieces) != expected:
        error = f"wrong body ({sum(map(len, pieces))} of {len(expected)} characters)"
    return StreamResult(opened, None if first is None else first - opened, end - opened, error)


def stream_summary(results: Sequence[StreamResult], arrivals: Sequence[tuple[float, int]],
                   window: tuple[float, float]) -> dict:
    """The figures of one run: the streams opened in ``window``, the chunks that arrived in it."""
    start, end = window
    opened = [r for r in results if start <= r.opened < end]
    ttfb = sorted(r.ttfb_s * 1000 for r in opened if r.ttfb_s is not None)
    durations = sorted(r.duration_s for r in opened if r.error is None)
    errors = Counter(r.error for r in opened if r.error is not None)
    chunks = sum(n for t, n in arrivals if start <= t < end)
    return {
        "streams": len(opened),
        "errors": sum(errors.values()),
        "error_causes": dict(errors),
        "seconds": round(end - start, 3),
        "chunks": chunks,
        "chunks_per_s": round(chunks / (end - start), 1) if end > start else 0.0,
        "ttfb_p50_ms": round(percentile(ttfb, 50), 2),
        "ttfb_p90_ms": round(percentile(ttfb, 90), 2),
        "ttfb_p99_ms": round(percentile(ttfb, 99), 2),
        "ttfb_max_ms": round(ttfb[-1], 2) if ttfb else 0.0,
        "stream_p50_s": round(percentile(durations, 50), 3),
        "stream_p99_s": round(percentile(durations, 99), 3),
    }


async def stream_load(open_stream: OpenStream, *, concurrency: int, chunks: int,
                      model_ids: Sequence[str], seconds: float, warmup: float,
                      stagger_s: float) -> dict:
    """``concurrency`` workers reading streams back to back; worker k asks for model
    ``model_ids[k % len(model_ids)]``. Returns ``stream_summary``'s figures."""
    expected = expected_body(chunks)
    results: list[StreamResult] = []
    arrivals: list[tuple[float, int]] = []
    start = time.monotonic()
    measure_from = start + warmup
    deadline = measure_from + seconds

    async def worker(k: int) -> None:
        await asyncio.sleep(stagger_s * k / concurrency)
        model_id = model_ids[k % len(model_ids)]
        while time.monotonic() < deadline:
            results.append(await read_stream(open_stream, model_id, expected, arrivals))

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return stream_summary(results, arrivals, (measure_from, deadline))


async def _http(spec: dict) -> dict:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=spec.get("timeout_s", 300))
    connector = aiohttp.TCPConnector(limit=0)  # no client-side cap on streams open at once
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def open_stream(model_id: str) -> AsyncIterable[bytes]:
            async with session.get(spec["url"], headers={HEADER: model_id}) as response:
                if response.status != 200:
                    body = await response.read()
                    raise RuntimeError(f"{response.status} {body[:60].decode(errors='replace')}")
                async for piece in response.content.iter_any():  # as it arrives, unbuffered
                    yield piece

        return await stream_load(open_stream, **{k: spec[k] for k in LOAD_KEYS})


def run_stream_client(spec: dict, cwd: str) -> dict:
    """Run the HTTP streaming client in a new process and return its figures."""
    return run_client_module("bench.stream_load", spec, cwd)


if __name__ == "__main__":
    client_main(_http)
