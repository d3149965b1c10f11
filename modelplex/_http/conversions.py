"""HTTP on both sides of the internal channel.

The proxy turns an ASGI request into an ``HTTPRequest`` (the picklable part of the scope plus
the body); the replica turns it back into a Starlette ``Request`` and renders whatever the user
returned into an ``HTTPResult``. Rendering happens in the replica so that a value that cannot
become a response fails there, with its type named, and the proxy only copies bytes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from .._errors import UnserializableResultError
from .._messages import HTTPRequest, HTTPResult

# Scope keys that are plain data and mean the same thing on the replica's side.
_SCOPE_KEYS = (
    "type",
    "asgi",
    "http_version",
    "method",
    "scheme",
    "path",
    "raw_path",
    "query_string",
    "root_path",
    "client",
    "server",
    "subprotocols",  # a WebSocket's, offered by its client
)

INTERNAL_HEADER_PREFIX = b"x-modelplex-"


def request_from_scope(scope: dict[str, Any], body: bytes, root_path: str) -> HTTPRequest:
    kept = {key: scope[key] for key in _SCOPE_KEYS if key in scope}
    kept["headers"] = [
        (name, value)
        for name, value in scope.get("headers", ())
        if not name.startswith(INTERNAL_HEADER_PREFIX)
    ]
    kept["root_path"] = root_path
    return HTTPRequest(kept, body)


def to_starlette(http: HTTPRequest) -> Request:
    body = http.body
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the body is complete; nothing else will arrive
        return {"type": "http.disconnect"}  # pragma: no cover

    scope = dict(http.scope)
    scope["headers"] = list(scope.get("headers", ()))
    return Request(scope, receive)


def to_response(value: Any) -> Response:
    if isinstance(value, Response):
        return value
    if isinstance(value, str):
        return PlainTextResponse(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Response(bytes(value), media_type="application/octet-stream")
    try:
        body = json.dumps(
            value, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=json_default
        )
    except (TypeError, ValueError) as exc:
        raise UnserializableResultError(
            f"cannot turn a return value of type {type(value).__qualname__} into an HTTP "
            f"response: return str, bytes, JSON-serializable data or a Starlette Response "
            f"({exc})"
        ) from None
    return Response(body, media_type=JSONResponse.media_type)


def json_default(value: Any) -> Any:
    """What ``json`` cannot encode itself, as Ray Serve's ``serve_encoders``: numpy arrays and
    scalars, torch tensors, pandas frames, exceptions (their message). None of these libraries
    is imported here: a value of their type exists only if the user's code imported them."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return tensor_to_json(torch, value)
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(value, np.ndarray):
            if value.dtype.kind == "f":
                value = value.astype(float)
            elif value.dtype.kind in "iu":
                value = value.astype(int)
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(value, pd.DataFrame):
        return value.to_dict(orient="records")
    if isinstance(value, Exception):
        return str(value)
    raise TypeError(f"Object of type {type(value).__qualname__} is not JSON serializable")


def tensor_to_json(torch: Any, tensor: Any) -> Any:
    """A tensor as nested lists (a 0-d tensor as a scalar), from any device and of any dtype
    with a real value per element: ``tolist`` covers bfloat16, float8 and the unsigned types
    that numpy lacks, so no detour through numpy. Graph, device, quantization and sparse
    layout are shed first; what still has no JSON form raises ``TypeError`` naming the dtype."""
    try:
        tensor = tensor.detach().cpu()
        if tensor.is_quantized:
            tensor = tensor.dequantize()
        if tensor.layout != torch.strided:
            tensor = tensor.to_dense()
    except (RuntimeError, NotImplementedError) as exc:  # a meta tensor has no data to copy
        raise TypeError(f"a tensor on {tensor.device} cannot be read: {exc}") from None
    if tensor.is_complex():
        raise TypeError(f"a tensor of dtype {tensor.dtype} has no JSON form (JSON has no "
                        f"complex numbers: return torch.view_as_real(tensor))")
    try:
        return tensor.tolist()
    except (RuntimeError, TypeError) as exc:  # packed sub-byte dtypes (float4_e2m1fn_x2)
        raise TypeError(f"a tensor of dtype {tensor.dtype} has no JSON form ({exc})") from None


# Responses whose ASGI call only sends ``status_code``, ``raw_headers`` and ``body``.
_PLAIN_RESPONSES = (Response, PlainTextResponse, JSONResponse, HTMLResponse)


async def render(value: Any) -> HTTPResult:
    """Run the response as an ASGI app and keep what it sends."""
    response = to_response(value)
    if type(response) in _PLAIN_RESPONSES and response.background is None:
        # What its __call__ would send, without running it: a third of a no-op's rendering.
        body = response.body
        return HTTPResult(response.status_code, tuple(response.raw_headers),
                          body if type(body) is bytes else bytes(body))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "method": "GET",
        "path": "/",
        "headers": [],
    }
    return await capture(response, scope, _never)


async def _never() -> dict[str, Any]:
    await asyncio.Event().wait()
    return {"type": "http.disconnect"}  # pragma: no cover


async def capture(app: Any, scope: dict[str, Any], receive: Any) -> HTTPResult:
    """Run an ASGI app (or response) and keep what it sends, whole."""
    status = 500
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))

    await app(scope, receive, send)
    return HTTPResult(status, tuple(headers), b"".join(chunks))
