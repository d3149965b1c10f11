"""The end of a run: Markdown tables side by side, modelplex/Ray ratios, and the targets.

Pure functions of the result rows, so a saved ``bench/results/<timestamp>.json`` can be
printed again: ``python -m bench.report bench/results/<timestamp>.json``.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Sequence

__all__ = ["check_targets", "summary"]

TRACE_COLUMNS = (
    ("system", "label"), ("req/s", "throughput_rps"), ("p50 ms", "p50_ms"), ("p90 ms", "p90_ms"),
    ("p99 ms", "p99_ms"), ("max ms", "max_ms"), ("errors", "errors"), ("loads", "loads"),
    ("hit rate", "hit_rate"), ("evictions", "evictions"), ("dup loads", "duplicate_loads"),
    ("used after evict", "uses_after_evict"), ("hottest model loads", "hottest_model_loads"),
    ("load ms p50", "load_ms_p50"), ("startup s", "startup_s"), ("serve.run s", "serve_run_s"),
)
OVERHEAD_COLUMNS = (("round", "round"), ("system", "label"), ("via", "via"),
                    ("req/s", "throughput_rps"), ("x bare uvicorn", "x_floor"),
                    ("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"), ("errors", "errors"),
                    ("server CPU us/req", "server_cpu_us"))
# The no-op variants of this checkout that --metrics-cost and --access-log-cost add.
DEFAULTS_LABEL = "modelplex[local] lru"
VARIANTS = {"metrics": "modelplex[local] lru metrics off",
            "access log": "modelplex[local] lru access log off",
            "both": "modelplex[local] lru metrics off access log off"}


def table(rows: Iterable[dict], columns: Sequence[tuple[str, str]]) -> str:
    def cell(value: Any) -> str:
        return "-" if value is None else str(value)

    lines = ["| " + " | ".join(name for name, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(key)) for _, key in columns) + " |" for row in rows]
    return "\n".join(lines)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _find(rows: Iterable[dict], **match: Any) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _trace_pairs(runs: Sequence[dict]) -> list[tuple[dict, dict]]:
    """(modelplex local LRU, Ray Serve) at each mode and max_ongoing both ran."""
    pairs = []
    for ray in (r for r in runs if r["system"] == "ray"):
        mine = _find(runs, system="modelplex", backend="local", policy="lru", mode=ray["mode"],
                     max_ongoing=ray["max_ongoing"])
        if mine is not None:
            pairs.append((mine, ray))
    return pairs


def _current(rows: Iterable[dict]) -> list[dict]:
    """The rows of this checkout, not of a ``--baseline`` one."""
    return [r for r in rows if "(baseline)" not in r.get("label", "")]


def with_floor_ratios(over: Sequence[dict]) -> list[dict]:
    """Each no-op row with its throughput over bare uvicorn's in the same round."""
    floors = {r.get("round", 0): r["throughput_rps"] for r in over if r["system"] == "uvicorn"}
    return [dict(r, x_floor=_ratio(r["throughput_rps"], floors.get(r.get("round", 0))))
            for r in over]


def floor_ratios(over: Sequence[dict]) -> list[dict]:
    """Per system and path: the ratio to bare uvicorn in each round, and their median."""
    by_key: dict[tuple[str, str], list[float]] = {}
    for row in with_floor_ratios(over):
        if row["system"] != "uvicorn" and row["x_floor"] is not None:
            by_key.setdefault((row["label"], row["via"]), []).append(row["x_floor"])
    return [{"label": label, "via": via, "rounds": ", ".join(map(str, xs)),
             "median": sorted(xs)[len(xs) // 2]} for (label, via), xs in by_key.items()]


def _median(values: Sequence[float]) -> float | None:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else None


def observability_costs(over: Sequence[dict]) -> list[dict]:
    """What metrics and the access log cost over HTTP, paired within each round: 1 - (req/s
    with it on) / (req/s with it off), and the server CPU per request with it on over off."""
    rows = []
    for what, label in VARIANTS.items():
        if what == "both":
            continue
        costs, cpus = [], []
        for row in over:
            if row["label"] != label or row["via"] != "http":
                continue
            on = _find(over, label=DEFAULTS_LABEL, via="http", round=row.get("round"))
            if on is None or not row["throughput_rps"]:
                continue
            costs.append(round(1 - on["throughput_rps"] / row["throughput_rps"], 3))
            if on.get("server_cpu_us") and row.get("server_cpu_us"):
                cpus.append(round(on["server_cpu_us"] / row["server_cpu_us"], 3))
        if costs:
            rows.append({"what": what, "costs": ", ".join(f"{c:.1%}" for c in costs),
                         "median": _median(costs), "cpu": ", ".join(map(str, cpus)),
                         "cpu_median": _median(cpus)})
    return rows


def check_targets(results: dict) -> list[dict]:
    """Each target with the measured value and whether it was met; None when not measured."""
    runs = _current(results.get("runs", []))
    over = _current(results.get("overhead", []))
    checks: list[dict] = []

    def add(target: str, value: Any, met: bool | None) -> None:
        checks.append({"target": target, "value": value, "met": met})

    mp_http = _find(over, system="modelplex", backend="local", via="http")
    ray_http = _find(over, system="ray", via="http")
    floor = _find(over, system="uvicorn")
    x = _ratio(mp_http and mp_http["throughput_rps"], ray_http and ray_http["throughput_rps"])
    add("no-op HTTP throughput >= 5x Ray Serve", x, None if x is None else x >= 5)
    medians = {(r["label"], r["via"]): r["median"] for r in floor_ratios(over)}
    x = medians.get((DEFAULTS_LABEL, "http"))
    if x is None:  # a run of another backend only
        x = _ratio(mp_http and mp_http["throughput_rps"], floor and floor["throughput_rps"])
    add("no-op HTTP throughput >= 0.5x bare uvicorn", x, None if x is None else x >= 0.5)
    x = medians.get((VARIANTS["both"], "http"))
    if x is not None:
        add("no-op HTTP, metrics and access log off, >= 0.6x bare uvicorn", x, x >= 0.6)
    for row in observability_costs(over):
        limit = 0.03 if row["what"] == "metrics" else 0.05
        add(f"{row['what']} cost < {limit:.0%} of no-op HTTP throughput (median of rounds)",
            f"{row['median']:.1%}", row["median"] < limit)
    for mine, ray in _trace_pairs(runs):
        where = f"({mine['mode']}, max_ongoing {mine['max_ongoing']})"
        x = _ratio(mine["throughput_rps"], ray["throughput_rps"])
        add(f"trace throughput >= 3x Ray Serve {where}", x, x is not None and x >= 3)
        x = _ratio(mine["p99_ms"], ray["p99_ms"])
        add(f"trace p99 <= 1/3 of Ray Serve's {where}", x, x is not None and x <= 1 / 3)
        add(f"LRU hit rate >= Ray Serve's {where}", f"{mine['hit_rate']} vs {ray['hit_rate']}",
            mine["hit_rate"] >= ray["hit_rate"])
    for run in runs:
        if run["system"] == "modelplex" and run["policy"] == "tinylfu" and run["max_ongoing"] == 5:
            add(f"tinylfu hit rate >= 0.62 ({run['label']}, {run['mode']}, max_ongoing 5)",
                run["hit_rate"],
                run["hit_rate"] >= 0.62)
    mine = [r for r in runs if r["system"] == "modelplex"]
    if mine:
        dup = sum(r["duplicate_loads"] for r in mine)
        add("0 duplicate loads (every modelplex trace run)", dup, dup == 0)
        used = sum(r["uses_after_evict"] for r in mine)
        add("0 uses after evict (every modelplex trace run)", used, used == 0)
    # Real-mode replicas import numpy in their constructor: user code, not the framework's.
    ready = [r["serve_run_s"] for r in mine + over + results.get("sweep", {}).get("rows", [])
             if r["system"] == "modelplex" and r.get("backend") == "local"
             and r.get("mode") != "real" and "serve_run_s" in r]
    if ready:
        add("serve.run of 2 replicas ready < 1 s (slowest emulated or no-op run)", max(ready),
            max(ready) < 1)
    return checks


def summary(results: dict) -> str:
    """Everything a reader needs, as Markdown."""
    out: list[str] = []
    runs = results.get("runs", [])
    refs = results.get("references", {})
    for mode in ("emulated", "real"):
        for max_ongoing in sorted({r["max_ongoing"] for r in runs if r["mode"] == mode}):
            rows = [r for r in runs if r["mode"] == mode and r["max_ongoing"] == max_ongoing]
            rows += [{"label": f"reference: {name} (capacity {refs['capacity']})", "hit_rate": rate}
                     for name, rate in refs.items() if name != "capacity"]
            out += [f"### Trace, {mode} loads, max_ongoing_requests={max_ongoing}", "",
                    table(rows, TRACE_COLUMNS), ""]
    pairs = _trace_pairs(runs)
    if pairs:
        out += ["### modelplex (LRU) / Ray Serve on the trace", "",
                table([{"where": f"{m['mode']}, max_ongoing {m['max_ongoing']}",
                        "tput": _ratio(m["throughput_rps"], r["throughput_rps"]),
                        "p50": _ratio(m["p50_ms"], r["p50_ms"]),
                        "p99": _ratio(m["p99_ms"], r["p99_ms"]),
                        "hit": f"{m['hit_rate']} vs {r['hit_rate']}",
                        "startup": f"{m['startup_s']} vs {r['startup_s']} "
                                   f"({r.get('startup_with_init_s')} with ray.init)"}
                       for m, r in pairs],
                      (("mode, max_ongoing", "where"), ("throughput x", "tput"),
                       ("p50 ratio", "p50"), ("p99 ratio", "p99"), ("hit rate", "hit"),
                       ("startup s (modelplex vs Ray)", "startup"))), ""]
    over = results.get("overhead", [])
    if over:
        out += ["### No-op overhead", "", table(with_floor_ratios(over), OVERHEAD_COLUMNS), ""]
        out += [table(floor_ratios(over), (("system", "label"), ("via", "via"),
                                           ("x bare uvicorn, each round", "rounds"),
                                           ("median", "median"))), ""]
        costs = observability_costs(_current(over))
        if costs:
            out += [table(costs, (("on against off", "what"), ("throughput cost, each round", "costs"),
                                  ("median", "median"), ("server CPU on/off", "cpu"),
                                  ("median", "cpu_median"))), ""]
        over = _current(over)
        ratios = []
        for via in ("http", "handle"):
            mine = _find(over, system="modelplex", backend="local", via=via)
            ray = _find(over, system="ray", via=via)
            floor = _find(over, system="uvicorn")
            if mine and ray:
                ratios.append(f"modelplex/Ray via {via}: "
                              f"{_ratio(mine['throughput_rps'], ray['throughput_rps'])}x")
            if mine and floor and via == "http":
                ratios.append("modelplex/bare uvicorn via http: "
                              f"{_ratio(mine['throughput_rps'], floor['throughput_rps'])}x")
        out += ["; ".join(ratios), ""]
    sweep = results.get("sweep", {})
    if sweep.get("rows"):
        cols = (("policy", "policy"), ("K", "slots"), ("hit rate", "hit_rate"),
                ("p99 ms", "p99_ms"), ("req/s", "throughput_rps"), ("loads", "loads"),
                ("dup loads", "duplicate_loads"), ("used after evict", "uses_after_evict"))
        out += [f"### Slots sweep (emulated, max_ongoing {sweep['max_ongoing']})", "",
                table(sweep["rows"], cols), ""]
        ref_rows = [{"slots": k, **v} for k, v in sorted(sweep["references"].items(),
                                                          key=lambda kv: int(kv[0]))]
        out += [table(ref_rows, (("K", "slots"), ("global LRU", "global_lru"),
                                 ("Belady", "belady"), ("static top-K", "static_top_k"))), ""]
    out += targets_and_notes(check_targets(results), results.get("notes", []))
    return "\n".join(out)


def targets_and_notes(checks: list[dict], notes: list[str]) -> list[str]:
    """The closing lines of a summary: the targets, met or MISSED, then the run's notes."""
    out: list[str] = []
    if checks:
        mark = {True: "met", False: "MISSED", None: "not measured"}
        out += ["### Targets", "",
                table([{**c, "met": mark[c["met"]]} for c in checks],
                      (("target", "target"), ("measured", "value"), ("", "met"))), ""]
    return out + [f"- {note}" for note in notes]


def main() -> None:
    with open(sys.argv[1]) as f:
        print(summary(json.load(f)))


if __name__ == "__main__":
    main()
