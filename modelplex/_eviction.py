"""Which cached models to evict, and how big a model is.

Pure functions of plain views, with no asyncio and no cache state, so a policy can be tested
on its own and swapped (a frequency-aware policy only needs the same ``victims`` signature).
"""

from __future__ import annotations

import itertools
import numbers
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

__all__ = [
    "EntryView",
    "EvictionPolicy",
    "LRUPolicy",
    "default_model_size",
    "policy_from_name",
]


@dataclass(frozen=True)
class EntryView:
    """What a policy may know about one loaded model."""

    model_id: str
    last_used: float
    size: int | None  # bytes; None when the sizer could not tell
    hits: int
    load_s: float  # how long the load took: what an eviction costs to undo
    pinned: bool


class EvictionPolicy(Protocol):
    name: str

    def victims(
        self,
        entries: Sequence[EntryView],
        *,
        max_models: int,
        max_bytes: int | None,
        protect: frozenset[str] = frozenset(),
    ) -> list[str]:
        """Ids to evict, first to go first, so that the rest fit the limits.

        Never pinned entries nor ids in ``protect``; if the limits cannot be met without
        them, return what helps and let the caller report the overshoot.
        """
        ...


def _over(count: int, total: int, max_models: int, max_bytes: int | None) -> tuple[bool, bool]:
    return (
        max_models != -1 and count > max_models,
        max_bytes is not None and total > max_bytes,
    )


class LRUPolicy:
    """Evict the least recently used models first.

    When only the byte budget is exceeded, entries of unknown (or zero) size are skipped:
    evicting them frees nothing the budget can see.
    """

    name = "lru"

    def victims(
        self,
        entries: Sequence[EntryView],
        *,
        max_models: int,
        max_bytes: int | None,
        protect: frozenset[str] = frozenset(),
    ) -> list[str]:
        count = len(entries)
        total = sum(e.size or 0 for e in entries)
        # sorted() is stable: entries with equal timestamps keep the caller's order.
        candidates = sorted(
            (e for e in entries if not e.pinned and e.model_id not in protect),
            key=lambda e: e.last_used,
        )
        chosen: list[str] = []
        for entry in candidates:
            too_many, too_big = _over(count, total, max_models, max_bytes)
            if not (too_many or too_big):
                break
            if not too_many and not entry.size:
                continue
            chosen.append(entry.model_id)
            count -= 1
            total -= entry.size or 0
        return chosen

    def __repr__(self) -> str:
        return "LRUPolicy()"


_POLICIES: dict[str, type] = {"lru": LRUPolicy}


def policy_from_name(name: str) -> EvictionPolicy:
    """A fresh policy for a name from configuration."""
    cls = _POLICIES.get(name) if isinstance(name, str) else None
    if cls is None:
        known = ", ".join(repr(n) for n in sorted(_POLICIES))
        raise ValueError(f"unknown eviction policy {name!r}; known policies: {known}")
    return cls()


def _as_size(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    size = int(value)
    return size if size >= 0 else None


def default_model_size(model: Any) -> int | None:
    """Bytes held by a numpy-like array or a torch-like module, else None.

    Duck-typed so neither numpy nor torch is imported. Never raises: a model whose attributes
    misbehave is simply of unknown size.
    """
    try:
        size = _as_size(getattr(model, "nbytes", None))
        if size is not None:
            return size
        parameters = getattr(model, "parameters", None)
        buffers = getattr(model, "buffers", None)
        if not (callable(parameters) and callable(buffers)):
            return None
        total = 0
        for tensor in itertools.chain(parameters(), buffers()):
            part = _as_size(tensor.numel() * tensor.element_size())
            if part is None:
                return None
            total += part
        return total
    except Exception:
        return None
