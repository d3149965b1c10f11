"""Metric families as plain in-process values: what the hot path updates.

A request updates a few Python numbers (a counter's value, a histogram's bucket and sum): no
lock, no file, no system call. The figures become Prometheus samples only when someone asks:
``snapshot`` hands them to the node folder's publisher (``folder.py``), which writes each
process's snapshot a few times a second, and a scrape merges the snapshots of every process on
the node. prometheus-client's multiprocess mode would instead write a memory-mapped file on
every increment (a lock, a pid check and a write: microseconds each, on every request).

The children keep prometheus-client's method names (``labels``, ``inc``, ``dec``, ``set``,
``observe``), so the recorders read the same either way.
"""

from __future__ import annotations

import bisect
from typing import Any

__all__ = ["Counter", "Gauge", "Histogram", "MaxGauge", "Snapshot", "Store"]

# name -> (kind, documentation, label names, bucket bounds, {label values: value}); a
# histogram's value is (per-bucket counts, the +Inf bucket last; sum).
Snapshot = dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...], dict[tuple, Any]]]


class _Value:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class _Buckets:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf's
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # Prometheus's buckets are "less than or equal": bisect_left finds the first bound >= value.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Family:
    kind = ""

    def __init__(self, store: "Store", name: str, doc: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labelnames)
        self.children: dict[tuple[str, ...], Any] = {}
        store.add(self)

    def labels(self, *values: str) -> Any:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values!r}")
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self._child()
        return child

    def _child(self) -> Any:
        return _Value()

    def bounds(self) -> tuple[float, ...]:
        return ()

    def values(self) -> dict[tuple, Any]:
        return {k: c.value for k, c in dict(self.children).items()}


class Counter(_Family):
    kind = "counter"


class Gauge(_Family):
    """Summed over the live processes of a node at a scrape (prometheus-client's ``livesum``)."""

    kind = "gauge"


class MaxGauge(_Family):
    """The largest over the live processes of a node (``livemax``): a share each router
    computes for itself, which summing would overstate."""

    kind = "gauge_max"


class Histogram(_Family):
    kind = "histogram"

    def __init__(
        self, store: "Store", name: str, doc: str, labelnames: tuple[str, ...],
        buckets: tuple[float, ...],
    ) -> None:
        self._bounds = tuple(float(b) for b in buckets)
        super().__init__(store, name, doc, labelnames)

    def _child(self) -> Any:
        return _Buckets(self._bounds)

    def bounds(self) -> tuple[float, ...]:
        return self._bounds

    def values(self) -> dict[tuple, Any]:
        return {k: (tuple(c.counts), c.sum) for k, c in dict(self.children).items()}


class Store:
    """One process's families."""

    def __init__(self) -> None:
        self._families: list[_Family] = []

    def add(self, family: _Family) -> None:
        self._families.append(family)

    def snapshot(self, *, gauges: bool = True) -> Snapshot:
        """Every family with a child; ``gauges=False`` leaves the gauges out (a process that
        ended: its counters still count, its gauges no longer do)."""
        return {
            f.name: (f.kind, f.doc, f.labelnames, f.bounds(), f.values())
            for f in list(self._families)
            if f.children and (gauges or not f.kind.startswith("gauge"))
        }
