"""``GET /-/status``, the live page ``/-/dashboard`` and its event stream ``/-/events``.

While a page listens, ``StatusFeed`` collects the status four times a second and pushes a
change as a server-sent event, with the loads and unloads since the last one (``diff``, pure).
A browser cannot set an ``Authorization`` header on a page load or an ``EventSource``, so these
three read-only routes also take the token as ``?token=`` (the page then keeps it in an
HttpOnly, SameSite=Strict cookie scoped to ``/-/``) or that cookie. Routes that change
something take the header alone, so a cookie can never be used to deploy (no CSRF).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from importlib import resources
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl, quote, unquote

from ._errors import RouteNotFoundError, UnauthorizedError
from ._status import ServeStatus, status_dict

logger = logging.getLogger("modelplex.proxy")

ROUTES = ("/-/status", "/-/dashboard", "/-/events")
COOKIE = "modelplex_token"
PERIOD_S = 0.25  # how often the feed looks while someone listens
HEARTBEAT_S = 2.0  # a document goes out at least this often (idle times move)
_QUEUE = 8  # messages a slow page may fall behind before the oldest are dropped

Cell = tuple[str, str, str, str]  # (application, deployment, replica id, model id)


def cells(doc: dict[str, Any]) -> dict[Cell, dict[str, Any]]:
    """Every (application, deployment, replica, model) of a status document, with its model."""
    out: dict[Cell, dict[str, Any]] = {}
    for app_name, app in doc["applications"].items():
        for name, deployment in app["deployments"].items():
            for replica in deployment["replicas"]:
                if replica["ongoing"] is None:
                    continue  # did not answer: no news of its models
                for model in replica["models"]:
                    out[(app_name, name, replica["replica_id"], model["model_id"])] = model
    return out


def diff(
    old: dict[Cell, dict[str, Any]], new: dict[Cell, dict[str, Any]],
    answered: set[str], now: float,
) -> list[dict[str, Any]]:
    """The loads and unloads between two documents. A model of a replica that did not answer
    this time (in ``answered`` are those that did) has not gone."""
    events = []
    for cell, model in new.items():
        before = old.get(cell)
        if before is None or before["state"] != model["state"]:
            events.append(_event(cell, model["state"], model.get("load_s"), now))
    for cell in old:
        if cell not in new and cell[2] in answered:
            events.append(_event(cell, "unloaded", None, now))
    return events


def _event(cell: Cell, what: str, load_s: float | None, now: float) -> dict[str, Any]:
    app, deployment, replica, model = cell
    return {"time": round(now, 3), "event": what, "app": app, "deployment": deployment,
            "replica": replica, "model": model, "load_s": load_s}


def _shape(doc: dict[str, Any]) -> str:
    """The document without what moves on its own (idle times): a change of this is news."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "idle_s"}
        if isinstance(value, (list, tuple)):
            return [strip(v) for v in value]
        return value

    return json.dumps(strip(doc), sort_keys=True)


class StatusFeed:
    """Collects the status while someone listens, and hands each change to every listener."""

    def __init__(
        self,
        collect: Callable[[], Awaitable[ServeStatus]],
        *,
        period_s: float = PERIOD_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._collect = collect
        self._period_s = period_s
        self._clock = clock
        self._listeners: set[asyncio.Queue] = set()
        self._task: asyncio.Task | None = None
        self._latest: dict[str, Any] | None = None
        self._closed = False

    async def status(self) -> dict[str, Any]:
        return status_dict(await self._collect())

    def listen(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(_QUEUE)
        if self._latest is not None:
            queue.put_nowait({**self._latest, "events": []})
        self._listeners.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return queue

    def leave(self, queue: asyncio.Queue) -> None:
        self._listeners.discard(queue)

    def close(self) -> None:
        """End every stream (the proxy is stopping)."""
        self._closed = True
        for queue in list(self._listeners):
            _put(queue, None)
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        shape, sent_at, cells_before = "", 0.0, {}
        while self._listeners and not self._closed:
            started = self._clock()
            try:
                doc = await self.status()
            except Exception:
                logger.debug("collecting the status failed", exc_info=True)
                await asyncio.sleep(1.0)
                continue
            now = self._clock()
            answered = {
                r["replica_id"]
                for app in doc["applications"].values()
                for d in app["deployments"].values()
                for r in d["replicas"] if r["ongoing"] is not None
            }
            cells_now = cells(doc)
            events = diff(cells_before, cells_now, answered, now) if sent_at else []
            cells_before = {c: m for c, m in cells_before.items() if c[2] not in answered}
            cells_before.update(cells_now)
            new_shape = _shape(doc)
            if new_shape != shape or events or now - sent_at >= HEARTBEAT_S:
                shape, sent_at = new_shape, now
                self._latest = {"time": round(now, 3), "status": doc}
                message = {**self._latest, "events": events}
                for queue in list(self._listeners):
                    _put(queue, message)
            await asyncio.sleep(max(0.0, self._period_s - (self._clock() - started)))

    # ---- HTTP ---------------------------------------------------------------------------------

    async def serve(self, scope: dict, receive: Any, send: Any, token: str | None) -> None:
        path = scope["path"]
        if scope["method"] != "GET":
            raise RouteNotFoundError(f"no management route {scope['method']} {path!r}")
        given, from_query = presented_token(scope)
        if token is not None and (given is None or not hmac.compare_digest(given, token)):
            raise UnauthorizedError(
                f"{path} needs 'Authorization: Bearer <token>' (a browser: {path}?token=<token>)"
            )
        if path == "/-/status":
            await _send(send, 200, json.dumps(await self.status()).encode(), "application/json")
        elif path == "/-/dashboard":
            headers = []
            if token is not None and from_query:
                headers.append((
                    b"set-cookie",
                    f"{COOKIE}={quote(token, safe='')}; Path=/-/; HttpOnly; SameSite=Strict".encode(),
                ))
            await _send(send, 200, page(), "text/html", headers)
        else:
            await self._stream(receive, send)

    async def _stream(self, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]})
        queue = self.listen()
        loop = asyncio.get_running_loop()
        gone = loop.create_task(_disconnected(receive))
        try:
            while not self._closed:
                get = loop.create_task(queue.get())
                await asyncio.wait((get, gone), timeout=15, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    if gone.done():
                        return
                    chunk = b": keep-alive\n\n"
                else:
                    message = get.result()
                    if message is None:
                        break
                    chunk = b"data: " + json.dumps(message).encode() + b"\n\n"
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.leave(queue)
            gone.cancel()


def presented_token(scope: dict) -> tuple[str | None, bool]:
    """The token a request carries: the Authorization header, else ``?token=``, else the
    page's cookie; and whether it came from the query."""
    cookie = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            text = value.decode("latin-1")
            return (text[7:] if text.startswith("Bearer ") else ""), False
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, val = part.strip().partition("=")
                if key == COOKIE:
                    cookie = unquote(val)
    query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
    if "token" in query:
        return query["token"], True
    return cookie, False


_page: bytes | None = None


def page() -> bytes:
    global _page
    if _page is None:
        _page = resources.files("modelplex").joinpath("static/dashboard.html").read_bytes()
    return _page


def _put(queue: asyncio.Queue, message: Any) -> None:
    while True:
        try:
            queue.put_nowait(message)
            return
        except asyncio.QueueFull:
            queue.get_nowait()  # a page that fell behind loses the oldest


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send(send: Any, status: int, body: bytes, media: str, extra: list | None = None) -> None:
    headers = [
        (b"content-type", f"{media}; charset=utf-8".encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
