"""The end of ``bench.storage``: tables, ratios and the targets, as pure functions of the rows.

    python -m bench.storage_report bench/results/storage-<stamp>.json   # print a run again
"""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable

from .report import table

__all__ = ["check_targets", "ratios", "summary"]

BIG = 32 * 1024 * 1024  # the warm-disk target holds from this size up


def _find(rows: Iterable[dict], **match: Any) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def ratios(results: dict) -> dict:
    """The side-by-side ratios of one run, keyed by what they compare."""
    out: dict[str, Any] = {}
    paths = results.get("paths", [])
    for fetch in (r for r in paths if r["loader"] == "fetch"):
        seed = _find(paths, loader="aioboto3", size=fetch["size"])
        key = fetch["size_label"]
        out[f"paths.{key}.seed_reload_over_fetch_reload"] = _ratio(
            seed and seed["reload_ms"], fetch["reload_ms"])
        out[f"paths.{key}.fetch_cold_over_fetch_reload"] = _ratio(
            fetch["cold_ms"], fetch["reload_ms"])
    cost = (results.get("bookkeeping") or [None])[-1]
    if cost:
        out["bookkeeping.fetch_over_fsspec"] = _ratio(cost["fetch_ms"], cost["fsspec_ms"])
    trace = results.get("trace", [])
    mine = _find(trace, system="modelplex", loader="fetch")
    for other in (r for r in trace if r is not mine):
        name = f"{other['system']}_{other['loader']}"
        out[f"trace.{name}_over_fetch.bytes"] = _ratio(
            other["bytes_downloaded"], mine and mine["bytes_downloaded"])
        out[f"trace.{name}_over_fetch.p99"] = _ratio(other["p99_ms"], mine and mine["p99_ms"])
    return out


def check_targets(results: dict) -> dict:
    """Each target: {"met": bool or None (not measured), "value": the figure it looked at}."""
    r = ratios(results)
    targets: dict[str, dict] = {}
    big = sorted({p["size_label"] for p in results.get("paths", [])
                  if p["loader"] == "fetch" and p["size"] >= BIG})
    for key in big:
        value = r.get(f"paths.{key}.seed_reload_over_fetch_reload")
        targets[f"warm_disk_reload_5x_faster_than_redownload_{key}"] = {
            "met": None if value is None else value >= 5, "value": value}
    once = _find(results.get("at_once", []), loader="fetch")
    targets["one_download_per_object_per_node"] = {
        "met": None if once is None else once["downloads"] == 1,
        "value": once and once["downloads"]}
    cost = r.get("bookkeeping.fetch_over_fsspec")
    targets["bookkeeping_under_5_percent"] = {
        "met": None if cost is None else cost < 1.05, "value": cost}
    return targets


PATH_COLUMNS = (("loader", "loader"), ("size", "size_label"), ("cold ms", "cold_ms"),
                ("reload after unload ms", "reload_ms"), ("memory hit ms", "memory_ms"),
                ("downloads", "downloads"), ("bytes downloaded", "bytes_downloaded"))
ONCE_COLUMNS = (("loader", "loader"), ("replicas", "replicas"), ("loads", "loads"),
                ("size", "size_label"), ("downloads", "downloads"), ("wall ms", "wall_ms"))
COST_COLUMNS = (("size", "size_label"), ("reps", "reps"), ("serve.fetch ms", "fetch_ms"),
                ("bare fsspec get ms", "fsspec_ms"), ("serve.fetch on disk ms", "fetch_warm_ms"))
TRACE_COLUMNS = (("system", "label"), ("requests", "requests"), ("errors", "errors"),
                 ("loads", "loads"), ("downloads", "downloads"),
                 ("bytes downloaded", "bytes_downloaded"), ("req/s", "throughput_rps"),
                 ("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"))


def summary(results: dict) -> str:
    parts = []
    for title, key, columns in (
            ("Load paths (medians)", "paths", PATH_COLUMNS),
            ("One cold model, replicas loading at once", "at_once", ONCE_COLUMNS),
            ("serve.fetch against a bare fsspec get (cold, medians)", "bookkeeping", COST_COLUMNS),
            ("Eviction-heavy trace", "trace", TRACE_COLUMNS)):
        if results.get(key):
            parts.append(f"### {title}\n\n{table(results[key], columns)}")
    r = {k: v for k, v in ratios(results).items() if v is not None}
    if r:
        parts.append("### Ratios\n\n" + "\n".join(f"- {k}: {v}" for k, v in r.items()))
    targets = results.get("targets") or check_targets(results)
    marks = {True: "met", False: "MISSED", None: "not measured"}
    parts.append("### Targets\n\n" + "\n".join(
        f"- {name}: {marks[t['met']]} ({t['value']})" for name, t in targets.items()))
    if results.get("notes"):
        parts.append("### Notes\n\n" + "\n".join(f"- {n}" for n in results["notes"]))
    return "\n\n".join(parts)


def main() -> None:
    with open(sys.argv[1]) as f:
        print(summary(json.load(f)))


if __name__ == "__main__":
    main()
