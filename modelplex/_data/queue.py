"""Requests waiting for a replica, grouped by model id.

Which group goes next is the fairness policy's business (``fairness.Fairness.order``); inside a
group, requests keep arrival order. Only a model whose holders are all busy (or that is at its
per-model cap) can wait while a replica has room: a cold model goes to any free replica, a
request without a model to any. So a pass over the groups stops failing after at most as many
groups as there are models held or capped, however long the queue is.

Adding, cancelling and placing a request are O(1). The waiting time that counts toward spilling
a model (see ``routing.SpillMeter``) is integrated per group: the group's size times the time
since it last changed, so no per-request pass is ever needed to keep it.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Callable

from .routing import Reason


class Waiting:
    """One request waiting for a slot; its future resolves to the slot reserved for it."""

    __slots__ = ("model_id", "future", "group", "since")

    def __init__(self, model_id: str, future: asyncio.Future, group: "Group", since: float) -> None:
        self.model_id = model_id
        self.future = future
        self.group = group
        self.since = since  # when it arrived

    @property
    def queued(self) -> bool:
        return self in self.group.members


class Group:
    """The waiting requests of one model id."""

    __slots__ = ("model_id", "members", "since", "reason")

    def __init__(self, model_id: str, now: float) -> None:
        self.model_id = model_id
        self.members: OrderedDict[Waiting, None] = OrderedDict()
        self.since = now  # when the waiting time was last integrated
        self.reason: Reason | None = None  # why its head could not be placed, last time

    def __len__(self) -> int:
        return len(self.members)

    def head(self) -> Waiting:
        return next(iter(self.members))

    def waited(self, now: float) -> float:
        """Request-seconds waited since the last call (0 for a clock going backwards)."""
        seconds = max(0.0, now - self.since) * len(self.members)
        self.since = max(now, self.since)
        return seconds


class WaitQueue:
    def __init__(self) -> None:
        self._groups: dict[str, Group] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def group(self, model_id: str) -> Group | None:
        return self._groups.get(model_id)

    def groups(self) -> list[Group]:
        return list(self._groups.values())

    def push(self, model_id: str, future: asyncio.Future, now: float) -> tuple[Waiting, float]:
        """Queue a request; return it and the group's waiting time integrated until now."""
        group = self._groups.get(model_id)
        waited = 0.0
        if group is None:
            group = self._groups[model_id] = Group(model_id, now)
        else:
            waited = group.waited(now)
        waiting = Waiting(model_id, future, group, now)
        group.members[waiting] = None
        self._size += 1
        return waiting, waited

    def remove(self, waiting: Waiting, now: float) -> float:
        """Take ``waiting`` out (placed, or its caller left); return the time its group waited
        until now. Removing a request that is no longer queued is a no-op returning 0."""
        group = waiting.group
        if waiting not in group.members:
            return 0.0
        waited = group.waited(now)
        del group.members[waiting]
        self._size -= 1
        self._drop_if_empty(group)
        return waited

    def pop_newest(self, group: Group) -> Waiting:
        """Take the group's newest request out (shed to make room)."""
        waiting, _ = group.members.popitem(last=True)
        self._size -= 1
        self._drop_if_empty(group)
        return waiting

    def longest(self, weight: Callable[[str], float]) -> Group | None:
        """The group with the most requests waiting per unit of weight (its model id's)."""
        return max(self._groups.values(), key=lambda g: len(g) / weight(g.model_id), default=None)

    def shed(self, keep: int) -> list[Waiting]:
        """Remove and return the newest requests beyond the first ``keep``: the newest groups'
        first, each group's newest first."""
        excess = self._size - keep
        shed: list[Waiting] = []
        for group in reversed(list(self._groups.values())):
            while excess > 0 and group.members:
                shed.append(self.pop_newest(group))
                excess -= 1
            if excess <= 0:
                break
        return shed

    def clear(self) -> list[Waiting]:
        everyone = [w for g in self._groups.values() for w in g.members]
        for group in self._groups.values():
            group.members.clear()
        self._groups.clear()
        self._size = 0
        return everyone

    def _drop_if_empty(self, group: Group) -> None:
        if not group.members and self._groups.get(group.model_id) is group:
            del self._groups[group.model_id]
