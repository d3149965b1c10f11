"""A reproducible request trace for the eviction benchmarks: Zipf-popular model ids.

Pure and seeded: the same parameters give the same requests in every run and on every Python
version (``random.Random`` with an explicit seed, no ``hash()``), and ``Trace.digest()`` lets
two reports show they replayed the same requests.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
from dataclasses import dataclass

__all__ = ["Trace", "make_trace", "zipf_weights"]


@dataclass(frozen=True)
class Trace:
    """The requested model ids, in order, and the parameters that made them."""

    model_ids: tuple[str, ...]
    num_models: int
    num_requests: int
    s: float
    seed: int

    def digest(self) -> str:
        """First 16 hex chars of the sha256 of the ids joined by newlines."""
        joined = "\n".join(self.model_ids).encode("utf-8")
        return hashlib.sha256(joined).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.model_ids)


def zipf_weights(num_models: int, s: float) -> list[float]:
    """Unnormalised Zipf weights 1/r**s for ranks r = 1..num_models."""
    return [1.0 / r**s for r in range(1, num_models + 1)]


def make_trace(
    num_models: int = 50, num_requests: int = 2000, s: float = 1.1, seed: int = 0
) -> Trace:
    """``num_requests`` ids drawn from "0".."num_models-1" with Zipf(``s``) popularity.

    One ``random.Random(seed)`` first shuffles which id gets which rank (so popularity is not
    the id order), then draws each request by inverse CDF.
    """
    if isinstance(num_models, bool) or not isinstance(num_models, int) or num_models < 1:
        raise ValueError(f"num_models must be an int >= 1, got {num_models!r}")
    if isinstance(num_requests, bool) or not isinstance(num_requests, int) or num_requests < 0:
        raise ValueError(f"num_requests must be an int >= 0, got {num_requests!r}")
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s < 0:
        raise ValueError(f"s must be a finite number >= 0, got {s!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    rng = random.Random(seed)
    by_rank = [str(i) for i in range(num_models)]
    rng.shuffle(by_rank)
    cumulative = list(itertools.accumulate(zipf_weights(num_models, s)))
    total = cumulative[-1]
    last = num_models - 1
    ids = tuple(
        by_rank[min(bisect.bisect_right(cumulative, rng.random() * total), last)]
        for _ in range(num_requests)
    )
    return Trace(ids, num_models, num_requests, float(s), seed)
