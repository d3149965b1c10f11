"""What the replicas' event logs say about a run: loads, evictions, duplicate loads.

Pure functions over the ``{"t", "event", "model", "pid"}`` records that ``bench.app``
writes; replicas share one machine, so their ``time.time()`` stamps compare.
"""

from __future__ import annotations

import glob
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

__all__ = ["CacheCounts", "count", "read_events"]


@dataclass(frozen=True)
class CacheCounts:
    loads: int
    evictions: int
    duplicate_loads: int  # a load of m starting while m is loading on another replica
    duplicate_loads_same_replica: int  # ... on the same replica (two loads of m in one cache)
    loads_by_model: Counter = field(default_factory=Counter)
    load_ms: tuple[float, ...] = ()  # how long each finished load took, in order of ending


def read_events(directory: str, until: float | None = None) -> list[dict]:
    """Every event in ``directory``'s ``events-*.jsonl``, by time; only up to ``until``."""
    events = []
    for path in glob.glob(os.path.join(directory, "events-*.jsonl")):
        with open(path) as f:
            for line in f:
                if line.strip():
                    event = json.loads(line)
                    if until is None or event["t"] <= until:
                        events.append(event)
    events.sort(key=lambda e: e["t"])
    return events


def count(events: Sequence[dict] | Iterable[dict]) -> CacheCounts:
    """Counts over events sorted by time. A load that never ended stays "loading"."""
    loading: dict[str, dict[int, int]] = {}  # model -> pid -> loads of it running there
    started: dict[tuple[str, int], list[float]] = {}  # (model, pid) -> start times
    load_ms: list[float] = []
    loads_by_model: Counter = Counter()
    evictions = other = same = 0
    for event in events:
        model, pid, kind = event["model"], event["pid"], event["event"]
        if kind == "load_start":
            loads_by_model[model] += 1
            running = loading.setdefault(model, {})
            if any(n > 0 for p, n in running.items() if p != pid):
                other += 1
            elif running.get(pid, 0) > 0:
                same += 1
            running[pid] = running.get(pid, 0) + 1
            started.setdefault((model, pid), []).append(event["t"])
        elif kind == "load_end":
            running = loading.get(model, {})
            if running.get(pid, 0) > 0:
                running[pid] -= 1
                load_ms.append((event["t"] - started[model, pid].pop(0)) * 1000)
        elif kind == "unload":
            evictions += 1
    return CacheCounts(sum(loads_by_model.values()), evictions, other, same, loads_by_model,
                       tuple(load_ms))
