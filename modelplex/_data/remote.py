"""What a process away from the controller learns from it over the control channel.

Replicas (for their handles) and proxies on other nodes use these; the driver reads the
controller's state directly. Both are long polls, so a change arrives as soon as it happens.
"""

from __future__ import annotations

import asyncio
import logging

from .._messages import (
    DeploymentID,
    ReplicaSet,
    RouterReport,
    RouteTable,
    WatchReplicas,
    WatchRoutes,
)
from .channel import ConnectionClosed
from .transport import Connection, connect

logger = logging.getLogger("modelplex.remote")

_RETRY_S = 0.5


class RemoteDirectory:
    """Replica sets from the controller, for routers living outside the driver."""

    def __init__(self, address: tuple[str, int], secret: bytes) -> None:
        self._address = address
        self._secret = secret
        self._conns: dict[DeploymentID, Connection] = {}
        self._reports: Connection | None = None
        self._connecting: asyncio.Task | None = None

    async def watch(self, deployment_id: DeploymentID, known_version: int) -> ReplicaSet:
        conn = self._conns.get(deployment_id)
        if conn is None or conn.closed:
            conn = await connect(self._address, secret=self._secret)
            self._conns[deployment_id] = conn
        await conn.send(WatchReplicas(deployment_id, known_version))
        reply = await conn.recv()
        if not isinstance(reply, ReplicaSet):
            raise TypeError(f"unexpected reply from controller: {type(reply).__name__}")
        return reply

    def report(self, report: RouterReport) -> None:
        """Send a router's report on a connection of its own; dropped while none is up."""
        conn = self._reports
        if conn is not None and not conn.closed:
            conn.send_nowait(report)
        elif self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._connect_reports())

    async def _connect_reports(self) -> None:
        try:
            self._reports = await connect(self._address, secret=self._secret)
        except (ConnectionError, OSError, TimeoutError) as exc:
            logger.debug("Cannot reach the controller for reports: %s", exc)

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        if self._reports is not None:
            self._reports.close()
        if self._connecting is not None:
            self._connecting.cancel()


class RemoteRoutes:
    """The controller's route table, kept current by a background long poll."""

    def __init__(self, address: tuple[str, int], secret: bytes) -> None:
        self._address = address
        self._secret = secret
        self._table = RouteTable(-1, {})
        self._conn: Connection | None = None
        self._task: asyncio.Task | None = None

    def __call__(self) -> dict[str, tuple[str, DeploymentID]]:
        return dict(self._table.routes)

    async def start(self) -> None:
        """Fetch the table once, then follow it; raises if the controller cannot be reached."""
        self._conn = await connect(self._address, secret=self._secret)
        await self._poll(self._conn)
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def _poll(self, conn: Connection) -> None:
        await conn.send(WatchRoutes(self._table.version))
        reply = await conn.recv()
        if not isinstance(reply, RouteTable):
            raise TypeError(f"unexpected reply from controller: {type(reply).__name__}")
        self._table = reply

    async def _follow(self) -> None:
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await connect(self._address, secret=self._secret)
                await self._poll(self._conn)
            except (ConnectionClosed, OSError) as exc:
                logger.warning("Lost the controller (%s); retrying in %.1fs.", exc, _RETRY_S)
                self._conn = None
                await asyncio.sleep(_RETRY_S)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._conn is not None:
            self._conn.close()
