"""Bounded label cardinality: which model ids keep a label of their own.

Labels keyed by model id keep the ``top_models`` busiest ids per deployment and fold the rest
into ``OTHER``, so a stream of distinct ids costs bounded memory and bounded series.
"""

from __future__ import annotations

__all__ = ["OTHER", "TopModels", "keep_busiest"]

OTHER = "__other__"


def keep_busiest(counts: dict[str, int], keep: int) -> dict[str, int]:
    """The ``keep`` largest counts (ties in insertion order): how a bounded counter forgets."""
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:keep])


class TopModels:
    """Which model ids keep a label of their own: at most ``k`` at a time, the busiest.

    A new id gets a label while fewer than ``k`` have one, or when it has been asked for more
    often than the least busy labelled id, which then folds into ``OTHER``. Counts are kept for
    at most ``max_tracked`` ids (the busiest quarter survives a prune), and at most
    ``max_labels`` ids are ever labelled, so a stream of distinct ids costs bounded memory and
    bounded series: each labelled id is a series for the rest of the process.
    """

    def __init__(self, k: int, *, max_tracked: int = 4096, max_labels: int | None = None) -> None:
        self._k = k
        self._max_tracked = max(max_tracked, 4 * k)
        self._budget = max_labels if max_labels is not None else 2 * k
        self._counts: dict[str, int] = {}
        self._labelled: set[str] = set()

    def label(self, model_id: str) -> str:
        """Count one request for ``model_id`` and return its label."""
        counts = self._counts
        count = counts.get(model_id, 0) + 1
        counts[model_id] = count
        labelled = self._labelled
        if model_id in labelled:
            return model_id
        if len(counts) > self._max_tracked:
            self._counts = keep_busiest(counts, self._max_tracked // 4)
            for m in labelled:
                self._counts.setdefault(m, counts[m])
        if self._budget <= 0:
            return OTHER
        if len(labelled) < self._k:
            return self._admit(model_id)
        weakest = min(labelled, key=lambda m: self._counts.get(m, 0))
        if count > self._counts.get(weakest, 0):
            labelled.discard(weakest)
            return self._admit(model_id)
        return OTHER

    def current(self, model_id: str) -> str:
        """The label ``model_id`` has now, without counting a request."""
        return model_id if model_id in self._labelled else OTHER

    def _admit(self, model_id: str) -> str:
        self._labelled.add(model_id)
        self._budget -= 1
        return model_id
