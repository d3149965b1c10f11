"""What runs here for each router, and telling every router what the *others* run.

A deployment's ``max_ongoing_requests_per_model`` holds across routers only if each router
knows what the other routers have running, and every replica knows that for itself: the
requests it runs, by the connection they came on. It tells each connected router the
per-model counts of the other connections (``InFlight``) when they changed, coalesced over
``delay_s`` so a burst costs one message per router. With one router connected there is
nothing to tell, and nothing is sent.

Owned by the user loop, which reads and answers the routers' connections; ``schedule`` is
its ``call_later``, so tests run it by hand.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable

from .._messages import InFlight

__all__ = ["DELAY_S", "InFlightCounts"]

# How long a change waits for others before the routers hear of it.
DELAY_S = 0.005


class InFlightCounts:
    def __init__(
        self,
        send: Callable[[Any, InFlight], None],
        schedule: Callable[[float, Callable[[], None]], Any],
        *,
        delay_s: float = DELAY_S,
    ) -> None:
        self._send = send
        self._schedule = schedule
        self._delay_s = delay_s
        self._by_conn: dict[Hashable, dict[str, int]] = {}  # connection -> model id -> running
        self._total: dict[str, int] = {}
        self._told: dict[Hashable, dict[str, int]] = {}  # what each connection was told last
        self._pending = False

    def connected(self, conn: Hashable) -> None:
        self._by_conn.setdefault(conn, {})
        self._changed()

    def disconnected(self, conn: Hashable) -> None:
        for model_id, count in self._by_conn.pop(conn, {}).items():
            self._add(model_id, -count)
        self._told.pop(conn, None)
        self._changed()

    def arrived(self, conn: Hashable, model_id: str) -> None:
        """A request for ``model_id`` came on ``conn`` and runs now."""
        if not model_id:
            return
        mine = self._by_conn.setdefault(conn, {})
        mine[model_id] = mine.get(model_id, 0) + 1
        self._add(model_id, 1)
        self._changed()

    def finished(self, conn: Hashable, model_id: str) -> None:
        if not model_id:
            return
        mine = self._by_conn.get(conn)
        if mine is None or model_id not in mine:
            return  # its connection went away first: already taken out
        if mine[model_id] <= 1:
            del mine[model_id]
        else:
            mine[model_id] -= 1
        self._add(model_id, -1)
        self._changed()

    def others(self, conn: Hashable) -> dict[str, int]:
        """What the connections but ``conn`` run, by model id."""
        mine = self._by_conn.get(conn, {})
        out = {}
        for model_id, count in self._total.items():
            left = count - mine.get(model_id, 0)
            if left > 0:
                out[model_id] = left
        return out

    def flush(self) -> None:
        """Tell each connection what changed for it since it was last told."""
        self._pending = False
        for conn in list(self._by_conn):
            others = self.others(conn)
            if others != self._told.get(conn, {}):
                self._told[conn] = others
                try:
                    self._send(conn, InFlight(tuple(sorted(others.items()))))
                except Exception:  # closed: its reader sees it end and disconnects it
                    pass

    def _add(self, model_id: str, delta: int) -> None:
        count = self._total.get(model_id, 0) + delta
        if count > 0:
            self._total[model_id] = count
        else:
            self._total.pop(model_id, None)

    def _changed(self) -> None:
        # One connection has no others: it needs telling only to take back what it was told.
        if self._pending or (len(self._by_conn) < 2 and not any(self._told.values())):
            return
        self._pending = True
        self._schedule(self._delay_s, self.flush)
