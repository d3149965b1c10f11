"""The streaming benchmark's pure parts: reading a stream, its figures, the ratios."""

from __future__ import annotations

import asyncio

from bench.stream_load import StreamResult, expected_body, read_stream, sse_chunk, stream_summary
from bench.streaming import buffered, checks, compare


def _read(pieces: list, chunks: int = 3) -> tuple[StreamResult, list[tuple[float, int]]]:
    async def open_stream(model_id: str):
        for piece in pieces:
            await asyncio.sleep(0)
            yield piece

    arrivals: list[tuple[float, int]] = []
    result = asyncio.run(read_stream(open_stream, "m0", expected_body(chunks), arrivals))
    return result, arrivals


def test_sse_chunks():
    assert sse_chunk(7) == "data: 7\n\n"
    assert expected_body(2) == "data: 0\n\ndata: 1\n\n"


def test_read_stream_counts_events_split_across_http_pieces():
    body = expected_body(3).encode()
    # "\n\n" of the first event split between two pieces, the last two events in one piece.
    result, arrivals = _read([body[:8], body[8:12], body[12:]])
    assert result.error is None and result.ttfb_s is not None
    assert result.ttfb_s <= result.duration_s
    assert [n for _, n in arrivals] == [0, 1, 2]


def test_read_stream_takes_a_handles_items():
    result, arrivals = _read([sse_chunk(i) for i in range(3)])
    assert result.error is None and [n for _, n in arrivals] == [1, 1, 1]


def test_read_stream_reports_a_short_body_and_a_failure():
    result, _ = _read([sse_chunk(0)])
    assert result.error == "wrong body (9 of 27 characters)"

    async def failing(model_id: str):
        yield sse_chunk(0)
        raise ConnectionResetError("gone")

    arrivals: list = []
    result = asyncio.run(read_stream(failing, "m0", expected_body(3), arrivals))
    assert result.error == "ConnectionResetError: gone" and result.ttfb_s is not None


def test_summary_keeps_the_window():
    results = [StreamResult(opened=t, ttfb_s=ttfb, duration_s=1.0, error=error)
               for t, ttfb, error in [(0.5, 0.9, None),  # warm-up: not counted
                                      (1.0, 0.010, None), (2.0, 0.020, None),
                                      (3.0, 0.030, "wrong body"), (3.5, None, "no answer"),
                                      (11.0, 0.001, None)]]  # after the window
    arrivals = [(0.9, 5), (1.0, 2), (5.0, 3), (10.9, 1), (11.0, 7)]
    figures = stream_summary(results, arrivals, (1.0, 11.0))
    assert figures["streams"] == 4
    assert figures["errors"] == 2
    assert figures["error_causes"] == {"wrong body": 1, "no answer": 1}
    assert figures["chunks"] == 6 and figures["chunks_per_s"] == 0.6
    assert (figures["ttfb_p50_ms"], figures["ttfb_p99_ms"], figures["ttfb_max_ms"]) == (
        20.0, 30.0, 30.0)
    assert figures["stream_p50_s"] == 1.0


def _row(system: str, path: str, p50: float, p99: float, rate: float, errors: int = 0) -> dict:
    return {"system": system, "path": path, "ttfb_p50_ms": p50, "ttfb_p99_ms": p99,
            "chunks_per_s": rate, "errors": errors}


def test_compare_ratios_and_targets():
    rows = [_row("modelplex", "http", 10, 60, 8000), _row("ray", "http", 40, 100, 4000),
            _row("modelplex", "handle", 10, 40, 9000, errors=1),
            _row("ray", "handle", 40, 100, 3000)]
    ratios = compare(rows)
    assert ratios["http"] == {"ttfb_p50_ratio": 0.25, "ttfb_p99_ratio": 0.6,
                              "chunks_per_s_ratio": 2.0,
                              "targets_met": {"ttfb_p50_half": True, "ttfb_p99_half": False}}
    # A run with errors meets no target, whatever its ratios.
    assert ratios["handle"]["targets_met"] == {"ttfb_p50_half": False, "ttfb_p99_half": False}
    assert [(c["target"], c["value"], c["met"]) for c in checks(ratios)][:2] == [
        ("http: TTFB p50 <= 1/2 of Ray Serve's", 0.25, True),
        ("http: TTFB p99 <= 1/2 of Ray Serve's", 0.6, False)]


def test_compare_needs_both_systems():
    assert compare([_row("ray", "http", 40, 100, 4000)]) == {}


def test_buffered_body_is_noticed():
    assert buffered({"streams": 9, "ttfb_p50_ms": 104.0, "stream_p50_s": 0.105})
    assert not buffered({"streams": 9, "ttfb_p50_ms": 148.0, "stream_p50_s": 3.3})
    assert not buffered({"streams": 0, "ttfb_p50_ms": 0.0, "stream_p50_s": 0.0})
