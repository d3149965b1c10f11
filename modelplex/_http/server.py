"""The uvicorn server under the proxy app; ``protocol.py`` is its httptools protocol."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

import uvicorn

from .._config import HTTPOptions
from .._errors import PortInUseError
from .._types import ASGIApp
from .protocol import bounded_protocol, head_limit


class _CutStreams(logging.Filter):
    """uvicorn's line for a response left incomplete: ours, a stream that failed midway, says
    it (once, with the error) already."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "ASGI callable returned without completing response."


class Proxy:
    """uvicorn serving the proxy app on this loop, on a socket we bind ourselves (so a port in
    use is a ``PortInUseError``, and port 0 tells which port it picked)."""

    def __init__(self, app: ASGIApp, options: HTTPOptions) -> None:
        self._app = app
        self._options = options
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None
        self.port: int | None = None

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self._options.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._options.host, self._options.port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(self._options.host, self._options.port) from None
            raise OSError(
                exc.errno,
                f"cannot listen on {self._options.host}:{self._options.port}: {exc.strerror}",
            ) from None
        sock.listen(2048)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            http=bounded_protocol(head_limit(self._options)),
            timeout_keep_alive=30,
            server_header=False,
        )
        uvicorn_errors = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, _CutStreams) for f in uvicorn_errors.filters):
            uvicorn_errors.addFilter(_CutStreams())
        self._server = uvicorn.Server(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the HTTP proxy stopped while starting")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, 10)
        except (asyncio.TimeoutError, Exception):
            self._task.cancel()
