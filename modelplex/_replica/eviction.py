"""Which cached models to evict, and how big a model is.

Pure functions of plain views, with no asyncio and no cache state, so a policy can be tested
on its own and swapped. Policies by name (``policy_from_name``):

* ``"lru"`` (the default): evict the least recently used models.
* ``"tinylfu"``: evict the least frequently used, with frequencies kept for models that are
  not cached too and halved periodically, and *admission*: a newly loaded model that is
  rarer than the model it would displace is evicted itself, once its request is done.

A policy needs only ``victims``. It may also opt in to two hooks the cache looks for:
``record_access(model_id, now)``, called on every acquire (hits and misses alike), and
``admission = True``, which makes the cache offer the newly loaded (or resurrected) model as
a candidate (``victims(..., new=model_id)``) instead of protecting it.
"""

from __future__ import annotations

import itertools
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

__all__ = [
    "AdmissionPolicy",
    "EntryView",
    "EvictionPolicy",
    "LRUPolicy",
    "TinyLFUPolicy",
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


class AdmissionPolicy(EvictionPolicy, Protocol):
    """A policy that sees every access and may refuse to keep a model it just loaded.

    With ``admission`` true the cache does not protect the new model: it passes it as
    ``new`` and evicts it like any other victim (after its request, if still in use).
    """

    admission: bool

    def record_access(self, model_id: str, now: float) -> None:
        """One request for ``model_id`` at time ``now``, whether cached or not."""
        ...

    def victims(
        self,
        entries: Sequence[EntryView],
        *,
        max_models: int,
        max_bytes: int | None,
        protect: frozenset[str] = frozenset(),
        new: str | None = None,
    ) -> list[str]:
        ...


def _over(count: int, total: int, max_models: int, max_bytes: int | None) -> tuple[bool, bool]:
    return (
        max_models != -1 and count > max_models,
        max_bytes is not None and total > max_bytes,
    )


def _take(
    entries: Sequence[EntryView],
    candidates: Sequence[EntryView],
    max_models: int,
    max_bytes: int | None,
) -> list[str]:
    """Candidates, in order, until the rest fit: the shared tail of every policy.

    When only the byte budget is exceeded, entries of unknown (or zero) size are skipped:
    evicting them frees nothing the budget can see.
    """
    count = len(entries)
    total = sum(e.size or 0 for e in entries)
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
        # sorted() is stable: entries with equal timestamps keep the caller's order.
        candidates = sorted(
            (e for e in entries if not e.pinned and e.model_id not in protect),
            key=lambda e: e.last_used,
        )
        return _take(entries, candidates, max_models, max_bytes)

    def __repr__(self) -> str:
        return "LRUPolicy()"


class TinyLFUPolicy:
    """Evict the least frequently requested models, and refuse to cache rare newcomers.

    LRU lets every model requested once push out a model requested all the time; under a
    skewed (Zipf-like) load that is most evictions. This policy counts requests per model,
    including models that are not cached (so a model that keeps coming back earns its slot),
    and evicts the lowest count first, least recently used first among equals.

    *Admission*: a newly loaded model competes with the cached ones. If it is requested less
    often than every model it could displace, it is the victim itself: the cache still serves
    it to the request that loaded it, then unloads it. Ties admit the newcomer, so a cache of
    equally cold models still behaves like LRU.

    *Aging*: every ``sample_size`` recorded accesses all counts are halved (rounding down, so
    one-off models are forgotten). That lets the policy follow popularity that shifts, and
    bounds memory (at most ``2 * sample_size`` counted ids; counts are exact, in a dict: a
    model cache sees few distinct ids, so a count-min sketch would buy nothing). By default
    ``sample_size`` is 20 requests per cache slot (the ``max_models`` of the latest
    ``victims`` call, or the models kept when only a byte budget applies; 100 until then):
    in simulation 10 per slot ranks models too noisily, 40 follows a shift too slowly.

    ``window`` models, the most recently used, are never victims (the "W" of W-TinyLFU): a
    new model gets that long to prove itself (keep it below ``max_models``, or nothing can be
    evicted). The default of 0 suits steady skewed load best: a window of 1 cost 2-3 points
    of hit rate in simulation.
    Deterministic: no randomness, no hashing; time only arrives as ``now`` arguments.
    """

    name = "tinylfu"
    admission = True
    PER_SLOT = 20
    INITIAL_SAMPLE_SIZE = 100

    def __init__(self, *, sample_size: int | None = None, window: int = 0) -> None:
        if sample_size is not None and (
            isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 1
        ):
            raise ValueError(f"sample_size must be an int >= 1 or None, got {sample_size!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise ValueError(f"window must be an int >= 0, got {window!r}")
        self._fixed_sample_size = sample_size
        self.window = window
        self._slots: int | None = None  # learned from victims() when sample_size is None
        self._counts: dict[str, int] = {}
        self._since_aging = 0

    @property
    def sample_size(self) -> int:
        """Recorded accesses between two halvings, as of now."""
        if self._fixed_sample_size is not None:
            return self._fixed_sample_size
        if self._slots is None:
            return self.INITIAL_SAMPLE_SIZE
        return self.PER_SLOT * self._slots

    def frequency(self, model_id: str) -> int:
        """The model's current (aged) request count; 0 if never seen or forgotten."""
        return self._counts.get(model_id, 0)

    @property
    def tracked_ids(self) -> int:
        """How many ids have a count: what aging keeps bounded."""
        return len(self._counts)

    def record_access(self, model_id: str, now: float) -> None:
        """Count one request. ``now`` is unused: aging goes by request count, not time, so
        the estimate rests on as many samples at 1 request/s as at 1000."""
        self._counts[model_id] = self._counts.get(model_id, 0) + 1
        self._since_aging += 1
        if self._since_aging >= self.sample_size:
            self._age()

    def _age(self) -> None:
        self._since_aging = 0
        self._counts = {m: c // 2 for m, c in self._counts.items() if c > 1}

    def victims(
        self,
        entries: Sequence[EntryView],
        *,
        max_models: int,
        max_bytes: int | None,
        protect: frozenset[str] = frozenset(),
        new: str | None = None,
    ) -> list[str]:
        """Least frequent first; ``new`` (just loaded) is a candidate like the others."""
        by_recency = sorted(entries, key=lambda e: e.last_used, reverse=True)
        recent = {e.model_id for e in by_recency[: self.window]}
        candidates = sorted(
            (
                e for e in entries
                if not e.pinned and e.model_id not in protect and e.model_id not in recent
            ),
            key=lambda e: (self.frequency(e.model_id), e.model_id == new, e.last_used),
        )
        chosen = _take(entries, candidates, max_models, max_bytes)
        self._slots = max(1, max_models if max_models != -1 else len(entries) - len(chosen))
        return chosen

    def __repr__(self) -> str:
        return f"TinyLFUPolicy(sample_size={self._fixed_sample_size!r}, window={self.window})"


_POLICIES: dict[str, Callable[[], EvictionPolicy]] = {"lru": LRUPolicy, "tinylfu": TinyLFUPolicy}


def policy_from_name(name: str) -> EvictionPolicy:
    """A fresh policy for a name from configuration."""
    factory = _POLICIES.get(name) if isinstance(name, str) else None
    if factory is None:
        known = ", ".join(repr(n) for n in sorted(_POLICIES))
        raise ValueError(f"unknown eviction policy {name!r}; known policies: {known}")
    return factory()


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
