"""The slots sweep as a figure: hit rate and p99 against cache slots per replica.

Drawn with matplotlib's Agg backend (no display needed) from the sweep rows of a run.
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["plot_slots"]

_REFERENCES = (("belady", "Belady MIN (one cache of R×K)", ":"),
               ("static_top_k", "static top-K oracle (R×K)", "-."),
               ("global_lru", "global LRU (one cache of R×K)", "--"))


def plot_slots(rows: Sequence[dict], references: dict[int, dict], path: str, title: str) -> None:
    """``rows``: sweep runs (``policy``, ``slots``, ``hit_rate``, ``p99_ms``);
    ``references``: slots -> reference hit rates at capacity replicas × slots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (hits, p99) = plt.subplots(1, 2, figsize=(11, 4.2))
    for policy, marker in (("lru", "o"), ("tinylfu", "s")):
        mine = sorted((r for r in rows if r["policy"] == policy), key=lambda r: r["slots"])
        if not mine:
            continue
        slots = [r["slots"] for r in mine]
        hits.plot(slots, [r["hit_rate"] for r in mine], marker=marker, label=f"modelplex {policy}")
        p99.plot(slots, [r["p99_ms"] for r in mine], marker=marker, label=f"modelplex {policy}")
    ks = sorted(references)
    for key, label, style in _REFERENCES:
        hits.plot(ks, [references[k][key] for k in ks], linestyle=style, color="grey", label=label)
    hits.set_xlabel("model slots per replica (K)")
    hits.set_ylabel("hit rate = 1 - loads / requests")
    hits.set_ylim(0, 1)
    hits.grid(alpha=0.3)
    hits.legend(fontsize=8, loc="lower right")
    p99.set_xlabel("model slots per replica (K)")
    p99.set_ylabel("p99 latency (ms)")
    p99.set_ylim(bottom=0)
    p99.grid(alpha=0.3)
    p99.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
