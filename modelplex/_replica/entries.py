"""What a model cache keeps of each model, and what it shows of them (plain records)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from .eviction import EntryView

__all__ = ["DRAINING", "Entry", "GONE", "LOADED", "LOADING", "ModelInfo", "ModelsSnapshot"]

LOADING = "loading"
LOADED = "loaded"
DRAINING = "draining"  # evicted, unloaded when the last reference goes
GONE = "gone"  # failed, or unloading/unloaded


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    size: int | None
    last_used: float
    load_s: float
    pinned: bool
    in_use: int  # references held by requests


@dataclass(frozen=True)
class ModelsSnapshot:
    loaded: tuple[ModelInfo, ...]  # least to most recently used
    loading: tuple[str, ...]


class Entry:
    """One model in one cache, from its load to its unload (mutable: the cache's own)."""

    __slots__ = (
        "model_id", "model", "state", "refs", "size", "last_used", "hits", "load_s", "pinned",
        "task",
    )

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.model: Any = None
        self.state = LOADING
        self.refs = 0
        self.size: int | None = None
        self.last_used = 0.0
        self.hits = 0
        self.load_s = 0.0
        self.pinned = False
        self.task: asyncio.Task | None = None

    def view(self) -> EntryView:
        return EntryView(self.model_id, self.last_used, self.size, self.hits, self.load_s, self.pinned)

    def info(self) -> ModelInfo:
        return ModelInfo(self.model_id, self.size, self.last_used, self.load_s, self.pinned, self.refs)
