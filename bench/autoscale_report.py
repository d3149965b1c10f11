"""The end of an autoscaling run: the table, the replica timeline, and the targets.

Pure functions of the result rows, so a saved run prints again:
``python -m bench.autoscale_report bench/results/autoscale-<stamp>.json``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from .report import table, targets_and_notes

__all__ = ["check_targets", "summary"]

COLUMNS = (
    ("system", "label"), ("scaling", "scaling"), ("replica-s", "replica_seconds"),
    ("mean replicas", "mean_replicas"), ("max replicas", "max_replicas"), ("p50 ms", "p50_ms"),
    ("p99 ms", "p99_ms"), ("burst p99 ms", "burst_p99_ms"), ("max ms", "max_ms"),
    ("loads", "loads"), ("hit rate", "hit_rate"), ("lost to stops", "lost_to_stops"),
    ("scale-down reloads", "scale_down_reloads"), ("preloads", "preloads"), ("failed", "errors"),
    ("replicas stopped", "replicas_stopped"), ("deployment __del__ calls", "replica_del_calls"),
)


def _row(results: dict, system: str) -> dict | None:
    return next((r for r in results.get("runs", []) if r["system"] == system), None)


def check_targets(results: dict) -> list[dict]:
    """Each target with the measured value and whether it was met; None when not measured."""
    mine, ray = _row(results, "modelplex"), _row(results, "ray")
    checks: list[dict] = []

    def add(target: str, value: Any, met: bool | None) -> None:
        checks.append({"target": target, "value": value, "met": met})

    if mine is not None:
        add("0 failed requests (modelplex)", mine["errors"], mine["errors"] == 0)
    if ray is not None:
        add("0 failed requests (Ray Serve, for reference)", ray["errors"], ray["errors"] == 0)
    if mine is None or ray is None:
        return checks
    fixed = "" if mine["autoscaled"] else " [modelplex at a fixed count]"
    p99 = round(mine["p99_ms"] / ray["p99_ms"], 3) if ray["p99_ms"] else None
    rs = round(mine["replica_seconds"] / ray["replica_seconds"], 3) if ray["replica_seconds"] else None
    add("modelplex p99 <= 1/2 of Ray Serve's" + fixed, p99, p99 is not None and p99 <= 0.5)
    add("... at <= Ray Serve's replica-seconds" + fixed, rs, rs is not None and rs <= 1.0)
    a, b = mine["scale_down_reloads"], ray["scale_down_reloads"]
    value = f"{a} vs {b}" + (f" ({round(b / a, 2)}x)" if a else "")
    add(">= 3x fewer reloads caused by scale-down" + fixed, value, 3 * a <= b and (b > 0 or a == 0))
    return checks


def summary(results: dict) -> str:
    out: list[str] = []
    runs = results.get("runs", [])
    if runs:
        out += ["### Autoscaling trace", "", table(runs, COLUMNS), ""]
        out += ["Replicas over time (one figure per 10 s, from the sampled processes):", ""]
        for run in runs:
            counts = run.get("replicas_per_10s", [])
            out.append(f"- {run['label']}: " + " ".join(str(c) for c in counts))
        out.append("")
    segments = [(run["label"], run.get("segments", [])) for run in runs]
    if runs and all(rows for _, rows in segments):
        out += ["Per segment of the trace (replica-seconds, p50 / p99 ms):", "",
                "| segment | " + " | ".join(label for label, _ in segments) + " |",
                "|---|" + "---|" * len(segments)]
        for i, seg in enumerate(segments[0][1]):
            cells = [f"{rows[i]['replica_seconds']} s, {rows[i]['p50_ms']} / {rows[i]['p99_ms']}"
                     for _, rows in segments]
            out.append(f"| {seg['kind']} {seg['from_s']:g}-{seg['to_s']:g} s | " + " | ".join(cells) + " |")
        out.append("")
    out += targets_and_notes(check_targets(results), results.get("notes", []))
    return "\n".join(out)


def main() -> None:
    with open(sys.argv[1]) as f:
        print(summary(json.load(f)))


if __name__ == "__main__":
    main()
