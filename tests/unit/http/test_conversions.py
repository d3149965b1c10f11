"""Rendering return values into HTTP responses, as the replica does it."""

from __future__ import annotations

import asyncio

import pytest
from starlette.responses import PlainTextResponse, StreamingResponse

from modelplex._http.conversions import UnserializableResultError, render, request_from_scope, to_starlette
from modelplex._http.proxy import match_route


def run(coro):
    return asyncio.run(coro)


def test_render_values():
    assert run(render("hi")).body == b"hi"
    result = run(render(b"\x00"))
    assert result.body == b"\x00"
    assert (b"content-type", b"application/octet-stream") in result.headers
    assert run(render({"a": 1})).body == b'{"a":1}'
    assert run(render([1, 2.5, None])).body == b"[1,2.5,null]"
    assert run(render(3)).body == b"3"
    teapot = run(render(PlainTextResponse("t", status_code=418)))
    assert (teapot.status, teapot.body) == (418, b"t")


def test_render_streaming_response_is_collected():
    async def chunks():
        for part in (b"a", b"b", b"c"):
            yield part

    assert run(render(StreamingResponse(chunks()))).body == b"abc"


def test_render_refuses_unserializable_values_naming_the_type():
    class Thing:
        pass

    with pytest.raises(UnserializableResultError, match="Thing"):
        run(render(Thing()))


def test_render_numpy_values_as_ray_serve_encoders_do():
    import numpy as np

    assert run(render(np.arange(3, dtype=np.int64))).body == b"[0,1,2]"
    assert run(render(np.array([[0.5], [1.5]], dtype=np.float32))).body == b"[[0.5],[1.5]]"
    assert run(render(np.float64(2.5))).body == b"2.5"
    assert run(render({"n": np.int32(7), "ok": np.bool_(True)})).body == b'{"n":7,"ok":true}'
    assert run(render(ValueError("bad"))).body == b'"bad"'
    with pytest.raises(UnserializableResultError, match="Thing"):
        run(render({"inner": [Thing()]}))


class Thing:
    pass


def test_request_round_trip_drops_internal_headers():
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/a/b",
        "query_string": b"x=1",
        "headers": [(b"host", b"h"), (b"x-modelplex-secret", b"nope")],
        "extensions": {"not": "copied"},
    }
    http = request_from_scope(scope, b"body", "/a")
    assert "extensions" not in http.scope
    request = to_starlette(http)

    async def read():
        return await request.body()

    assert run(read()) == b"body"
    assert request.query_params["x"] == "1"
    assert "x-modelplex-secret" not in request.headers


@pytest.mark.parametrize(
    "path, expected",
    [("/", "/"), ("/x", "/"), ("/api", "/api"), ("/api/v1", "/api"), ("/apix", "/"),
     ("/api/v2/y", "/api/v2")],
)
def test_match_route_takes_longest_segment_prefix(path, expected):
    assert match_route(path, ["/", "/api", "/api/v2"]) == expected


def test_match_route_without_root():
    assert match_route("/other", ["/api"]) is None
