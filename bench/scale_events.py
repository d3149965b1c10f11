"""What a scale-down cost the caches, from the replicas' event logs: pure functions.

The records are ``bench.app``'s (``{"t", "event", "model", "pid"}``) plus ``request`` (one per
request a replica starts) from ``bench.autoscale_app``. A replica's *last activity* is its last
request or load; a replica that stopped during the run (its process gone, as sampled) held a
model *at its stop* if the model was loaded there and not unloaded before that last activity
(plus ``EVICT_GRACE_S``: an LRU eviction may follow the load that caused it). Unloads after that
are the shutdown's (its models' ``__del__``), not LRU's.

A load is *requested* when a request for the model started on that replica within
``REQUEST_WINDOW_S`` before it; any other load is a *preload* (modelplex's hand-off: before a
replica stops, the survivors load its hot models). A requested load of model m on replica q at
time t is a **scale-down reload** when no replica other than
q holds m at t, and of m's holdings before t the one that ended last was lost to a stop. A held
model counts from its load's start until its unload; a model lost to a stop counts only until the
replica's last activity, since a stopping replica takes no new requests.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping

__all__ = ["Holding", "ScaleDownCounts", "holdings", "scale_down_counts"]

EVICT_GRACE_S = 0.05
REQUEST_WINDOW_S = 2.0


@dataclass(frozen=True)
class Holding:
    model: str
    pid: int
    start: float  # its load's start: a model being loaded is not missing there
    end: float  # when it stopped being usable: the unload, or the stopping replica's last activity
    lost: bool  # ended by its replica's stop, not by LRU


@dataclass(frozen=True)
class ScaleDownCounts:
    loads: int
    lost: int  # models held by replicas when they stopped during the run
    reloads: int  # requested loads of models whose last holder stopped (not LRU-evicted there)
    reloaded_models: tuple[str, ...] = ()
    preloads: int = 0  # loads no request on that replica asked for


def holdings(events: Iterable[dict], stopped: Mapping[int, float]) -> list[Holding]:
    """Every (model, replica) holding; ``stopped`` maps a pid that stopped during the run to when
    its process was last seen. Events must be sorted by time."""
    events = list(events)
    last_activity: dict[int, float] = {}
    for e in events:
        if e["event"] in ("request", "load_start", "load_end"):
            last_activity[e["pid"]] = e["t"]
    loading: dict[tuple[str, int], float] = {}
    open_: dict[tuple[str, int], float] = {}
    out: list[Holding] = []
    for e in events:
        key = (e["model"], e["pid"])
        if e["event"] == "load_start":
            loading[key] = e["t"]
        elif e["event"] == "load_end":
            open_[key] = loading.pop(key, e["t"])
        elif e["event"] == "unload" and key in open_:
            start = open_.pop(key)
            pid = e["pid"]
            active = last_activity.get(pid, start)
            lost = pid in stopped and e["t"] > active + EVICT_GRACE_S
            out.append(Holding(e["model"], pid, start, active if lost else e["t"], lost))
    for (model, pid), start in open_.items():  # never unloaded: killed, or still running
        if pid in stopped:
            out.append(Holding(model, pid, start, last_activity.get(pid, start), True))
        else:
            out.append(Holding(model, pid, start, float("inf"), False))
    return out


def scale_down_counts(events: Iterable[dict], stopped: Mapping[int, float]) -> ScaleDownCounts:
    """Loads, models lost to stops, and the reloads those losses caused (see the module doc)."""
    events = list(events)
    by_model: dict[str, list[Holding]] = defaultdict(list)
    held = holdings(events, stopped)
    for h in held:
        by_model[h.model].append(h)
    loads = reloads = preloads = 0
    reloaded: list[str] = []
    asked: dict[tuple[str, int], float] = {}  # (model, pid) -> its last request there
    for e in events:
        if e["event"] == "request":
            asked[e["model"], e["pid"]] = e["t"]
        if e["event"] != "load_start":
            continue
        loads += 1
        t, model, pid = e["t"], e["model"], e["pid"]
        if t - asked.get((model, pid), float("-inf")) > REQUEST_WINDOW_S:
            preloads += 1
            continue
        mine = by_model.get(model, [])
        if any(h.pid != pid and h.start <= t < h.end for h in mine):
            continue  # another replica has it: a spread or duplicate load, not a lost model
        before = [h for h in mine if h.end <= t]
        if before and max(before, key=lambda h: h.end).lost:
            reloads += 1
            reloaded.append(model)
    return ScaleDownCounts(loads, sum(h.lost for h in held), reloads, tuple(reloaded), preloads)
