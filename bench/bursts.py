"""The autoscaling benchmark's trace: open-loop arrivals with bursts and idle gaps.

Pure and seeded (``random.Random(seed)``, no ``hash()``): a schedule of segments, each
``base`` (Poisson arrivals at ``base_rate`` over ``base_models`` ids with Zipf popularity),
``burst`` (the base load plus ``burst_rate`` more over ``burst_models`` ids no earlier segment
asked for: cold models that go hot, uniform among them) or ``idle`` (no request at all).
Every request has the time it is due, from the start of the run, so a slow system is sent
the same load as a fast one. ``ArrivalTrace.digest()`` shows two reports replayed the same.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
from dataclasses import dataclass

from .trace import zipf_weights

__all__ = ["ArrivalTrace", "Segment", "FULL", "QUICK", "make_arrivals"]

KINDS = ("base", "burst", "idle")


@dataclass(frozen=True)
class Segment:
    kind: str  # "base", "burst" or "idle"
    seconds: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if isinstance(self.seconds, bool) or not isinstance(self.seconds, (int, float)) \
                or not math.isfinite(self.seconds) or self.seconds <= 0:
            raise ValueError(f"seconds must be a finite number > 0, got {self.seconds!r}")


# About 4 minutes: two bursts, each followed by base load (scale-down) and an idle gap.
FULL = (Segment("base", 30), Segment("burst", 30), Segment("base", 40), Segment("idle", 20),
        Segment("base", 30), Segment("burst", 30), Segment("base", 40), Segment("idle", 20))
# About 1 minute: one burst, then base load long enough for a scale-down.
QUICK = (Segment("base", 10), Segment("burst", 25), Segment("base", 20), Segment("idle", 5))


@dataclass(frozen=True)
class ArrivalTrace:
    """Due times (seconds from the start, ascending) and model ids, with what made them."""

    times: tuple[float, ...]
    model_ids: tuple[str, ...]
    segments: tuple[Segment, ...]
    base_models: int
    base_rate: float
    burst_models: int
    burst_rate: float
    s: float
    seed: int

    @property
    def duration_s(self) -> float:
        return sum(seg.seconds for seg in self.segments)

    def windows(self, kind: str) -> list[tuple[float, float]]:
        """(start, end) of each segment of ``kind``."""
        starts = itertools.accumulate((seg.seconds for seg in self.segments), initial=0.0)
        return [(t, t + seg.seconds) for t, seg in zip(starts, self.segments) if seg.kind == kind]

    def digest(self) -> str:
        """First 16 hex chars of the sha256 of "<ms> <id>" lines."""
        joined = "\n".join(f"{round(t * 1000)} {m}" for t, m in zip(self.times, self.model_ids))
        return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.times)


def _rate(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _poisson(rng: random.Random, rate: float, start: float, end: float) -> list[float]:
    """Arrival times of a Poisson process of ``rate`` per second in [start, end)."""
    times: list[float] = []
    if rate <= 0:
        return times
    t = start + rng.expovariate(rate)
    while t < end:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def make_arrivals(
    segments: tuple[Segment, ...] = FULL,
    *,
    base_models: int = 30,
    base_rate: float = 4.0,
    burst_models: int = 20,
    burst_rate: float = 12.0,
    s: float = 1.1,
    seed: int = 0,
) -> ArrivalTrace:
    """The trace for ``segments``; burst ``k`` asks for ids ``"x<k>-0"`` .. ``"x<k>-<n-1>"``,
    the base load for ``"b0"`` .. ``"b<base_models-1>"`` (Zipf ``s``, ranks shuffled)."""
    if not segments:
        raise ValueError("segments must not be empty")
    segments = tuple(segments)
    for seg in segments:
        if not isinstance(seg, Segment):
            raise TypeError(f"segments must be Segment values, got {seg!r}")
    _count("base_models", base_models)
    _count("burst_models", burst_models)
    base_rate, burst_rate = _rate("base_rate", base_rate), _rate("burst_rate", burst_rate)
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s < 0:
        raise ValueError(f"s must be a finite number >= 0, got {s!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")

    rng = random.Random(seed)
    by_rank = [f"b{i}" for i in range(base_models)]
    rng.shuffle(by_rank)
    cumulative = list(itertools.accumulate(zipf_weights(base_models, s)))

    def base_id() -> str:
        r = bisect.bisect_right(cumulative, rng.random() * cumulative[-1])
        return by_rank[min(r, base_models - 1)]

    requests: list[tuple[float, str]] = []
    start, bursts = 0.0, 0
    for seg in segments:
        end = start + seg.seconds
        if seg.kind != "idle":
            requests += [(t, base_id()) for t in _poisson(rng, base_rate, start, end)]
        if seg.kind == "burst":
            requests += [(t, f"x{bursts}-{rng.randrange(burst_models)}")
                         for t in _poisson(rng, burst_rate, start, end)]
            bursts += 1
        start = end
    requests.sort()
    return ArrivalTrace(
        tuple(t for t, _ in requests), tuple(m for _, m in requests), segments,
        base_models, base_rate, burst_models, burst_rate, float(s), seed,
    )
