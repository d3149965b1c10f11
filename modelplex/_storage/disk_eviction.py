"""Which artifacts leave the node's disk: a pure function, like ``_replica/eviction.py`` for memory.

An artifact that a live replica holds in memory (a model loaded from it) is never a victim:
evicting it would free nothing the model needs back soon, and the next eviction of the model
would cost a download. Among the rest, the least recently used go first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

__all__ = ["ArtifactView", "DiskPlan", "plan_eviction"]


@dataclass(frozen=True)
class ArtifactView:
    key: str
    size: int
    last_used: float
    held: bool


@dataclass(frozen=True)
class DiskPlan:
    victims: tuple[str, ...]  # least recently used first
    fits: bool  # whether the budget holds once they are gone and ``incoming`` is in


def plan_eviction(
    entries: Iterable[ArtifactView],
    *,
    max_bytes: int | None,
    incoming: int = 0,
    protect: frozenset[str] = frozenset(),
) -> DiskPlan:
    """Victims that make ``incoming`` more bytes fit in ``max_bytes`` (None: no budget).

    ``protect`` are keys busy right now (being downloaded or checked). When held and protected
    artifacts alone leave no room, every other one is a victim and ``fits`` is False.
    """
    entries = list(entries)
    if max_bytes is None:
        return DiskPlan((), True)
    total = sum(e.size for e in entries) + incoming
    victims: list[str] = []
    candidates = sorted(
        (e for e in entries if not e.held and e.key not in protect),
        key=lambda e: (e.last_used, e.key),
    )
    for entry in candidates:
        if total <= max_bytes:
            break
        victims.append(entry.key)
        total -= entry.size
    return DiskPlan(tuple(victims), total <= max_bytes)
