"""One tenant's flood against everyone's latency: modelplex's fair queuing across model ids
beside Ray Serve 2.60, in one run.

    python -m bench.tenants [--quick] [--systems modelplex,modelplex-fifo,ray]

Ten model ids share 2 replicas of ``max_ongoing`` slots; a request holds its slot
``infer_ms`` (times a factor drawn from [0.5, 1.5]), so the pool serves C = replicas x
max_ongoing / infer_s requests a second. Every id fits in every replica's cache: only queueing
is measured. Three phases per system, the same seeded Poisson arrivals for each system, each
phase ``warmup`` seconds unmeasured and then ``seconds`` measured:

- **alone**: nine quiet ids, each offering 5% of C;
- **flood**: the same, and one noisy id offering 10 x C;
- **pair**: two ids at 10:1 (10 x C and 1 x C), equal weights: both backlogged.

Both systems run the same deployment (``bench/tenants_app.py``) with the same
``max_queued_requests``; modelplex's default fairness is the difference, and
``modelplex-fifo`` (``fairness="fifo"``) is the control. Clients run in processes of their
own (the noisy and quiet ids in separate ones), open loop: a request's latency runs from when
it was due. Prints one JSON line per system and phase, a Markdown table, and the targets:

- the quiet ids' p99 with the flood <= 1.5 x their p99 alone;
- the noisy id keeps >= 80% of the capacity the quiet ids leave;
- the pair is served within 1.25 x of each other.

The run is saved to ``bench/results/tenants-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import tempfile
import time
from typing import Any, Iterable, Sequence

from .client import percentile, run_client_module
from .report import table, targets_and_notes
from .targets import ROOT, Server, SkipTarget, Target, ray_available

__all__ = ["PHASES", "checks", "poisson", "quiet_ids", "schedule", "summarize"]

PHASES = ("alone", "flood", "pair")
SYSTEMS = {"modelplex": ("modelplex", "fair"), "modelplex-fifo": ("modelplex", "fifo"),
           "ray": ("ray", None)}
LABELS = {"modelplex": "modelplex", "modelplex-fifo": "modelplex fifo", "ray": "Ray Serve 2.60"}
NOISY, BIG, SMALL = "noisy", "big", "small"
SETTINGS = {"full": {"seconds": 40.0, "warmup": 5.0}, "quick": {"seconds": 12.0, "warmup": 3.0}}
COLUMNS = (("system", "label"), ("phase", "phase"), ("quiet p50 ms", "quiet_p50_ms"),
           ("quiet p99 ms", "quiet_p99_ms"), ("worst quiet id p99 ms", "quiet_worst_p99_ms"),
           ("quiet shed", "quiet_shed"), ("noisy ok/s", "noisy_ok_per_s"),
           ("big ok/s", "big_ok_per_s"), ("small ok/s", "small_ok_per_s"),
           ("client lag ms", "client_lag_max_ms"))


def quiet_ids(models: int) -> list[str]:
    return [f"quiet-{i}" for i in range(models - 1)]


def poisson(rate: float, seconds: float, rng: random.Random) -> list[float]:
    """Arrival times of a Poisson process of ``rate`` a second over [0, seconds)."""
    times, t = [], 0.0
    if rate <= 0:
        return times
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return times
        times.append(round(t, 4))


def schedule(rates: dict[str, float], seconds: float, seed: int) -> list[tuple[float, str]]:
    """Every id's arrivals, merged in time order; each id's from its own seeded stream, so
    adding an id leaves the others' arrivals as they were."""
    merged = [(t, model_id) for model_id, rate in rates.items()
              for t in poisson(rate, seconds, random.Random(f"{seed}/{model_id}"))]
    return sorted(merged)


def summarize(results: Iterable[Sequence], start: float, seconds: float) -> dict[str, dict]:
    """Per model id, over the requests due in [start, start + seconds): sent, answered 200,
    shed (429 or 503), other errors, p50 and p99 of the answered ones, and answered a second."""
    by_model: dict[str, dict[str, Any]] = {}
    for due, model_id, latency_ms, status in results:
        if not start <= due < start + seconds:
            continue
        entry = by_model.setdefault(model_id, {"sent": 0, "ok": 0, "shed": 0, "errors": 0, "ms": []})
        entry["sent"] += 1
        if status == 200:
            entry["ok"] += 1
            entry["ms"].append(latency_ms)
        elif status in (429, 503):
            entry["shed"] += 1
        else:
            entry["errors"] += 1
    out = {}
    for model_id, entry in by_model.items():
        ms = sorted(entry.pop("ms"))
        out[model_id] = {**entry, "p50_ms": round(percentile(ms, 50), 1) if ms else None,
                         "p99_ms": round(percentile(ms, 99), 1) if ms else None,
                         "ok_per_s": round(entry["ok"] / seconds, 2)}
    return out


def quiet_figures(results: Iterable[Sequence], quiet: Sequence[str], start: float,
                  seconds: float) -> dict[str, Any]:
    """The quiet ids pooled (p50, p99, shed share) and the worst single quiet id's p99."""
    quiet_set = set(quiet)
    ms = sorted(r[2] for r in results if r[1] in quiet_set and r[3] == 200
                and start <= r[0] < start + seconds)
    per_id = summarize([r for r in results if r[1] in quiet_set], start, seconds)
    sent = sum(e["sent"] for e in per_id.values())
    shed = sum(e["shed"] + e["errors"] for e in per_id.values())
    if not sent:
        return dict.fromkeys(("quiet_p50_ms", "quiet_p99_ms", "quiet_worst_p99_ms", "quiet_shed"))
    return {"quiet_p50_ms": round(percentile(ms, 50), 1) if ms else None,
            "quiet_p99_ms": round(percentile(ms, 99), 1) if ms else None,
            "quiet_worst_p99_ms": max((e["p99_ms"] for e in per_id.values() if e["p99_ms"] is not None),
                                      default=None),
            "quiet_shed": round(shed / sent, 4) if sent else 0.0}


def per_id_table(rows: list[dict], quiet: Sequence[str]) -> str:
    """Each quiet id's p50 and p99, alone and with the flood, per system."""
    columns = [("quiet id", "id")]
    out = [{"id": m} for m in quiet]
    for row in rows:
        if row["phase"] not in ("alone", "flood"):
            continue
        for q in ("p50", "p99"):
            key = f"{row['system']} {row['phase']} {q}"
            columns.append((f"{row['label']} {row['phase']} {q} ms", key))
            for entry in out:
                entry[key] = row["per_model"].get(entry["id"], {}).get(f"{q}_ms")
    return table(out, columns)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def checks(rows: list[dict], capacity: float) -> list[dict]:
    """The targets, per system that ran all three phases."""
    out = []
    for system in dict.fromkeys(r["system"] for r in rows):
        phase = {r["phase"]: r for r in rows if r["system"] == system}
        if set(phase) != set(PHASES):
            continue
        label = phase["alone"]["label"]
        p99 = _ratio(phase["flood"]["quiet_p99_ms"], phase["alone"]["quiet_p99_ms"])
        left = capacity - phase["flood"]["quiet_ok_per_s"]
        kept = _ratio(phase["flood"]["noisy_ok_per_s"], left)
        big, small = phase["pair"]["big_ok_per_s"], phase["pair"]["small_ok_per_s"]
        pair = _ratio(max(big, small), min(big, small)) if min(big, small) > 0 else None
        clean = not phase["flood"]["quiet_shed"]
        out += [
            {"target": f"{label}: quiet p99 with the flood <= 1.5 x alone", "value": p99,
             "met": clean and p99 is not None and p99 <= 1.5},
            {"target": f"{label}: noisy keeps >= 80% of what the quiet ids leave", "value": kept,
             "met": kept is not None and kept >= 0.8},
            {"target": f"{label}: the 10:1 pair within 1.25 x of each other", "value": pair,
             "met": pair is not None and pair <= 1.25},
        ]
    return out


# ---- running ------------------------------------------------------------------------------------


def _clients(url: str, schedules: list[list[tuple[float, str]]], timeout_s: float) -> dict:
    """One client process per schedule, all at once; their results merged."""
    with concurrent.futures.ThreadPoolExecutor(len(schedules)) as pool:
        runs = list(pool.map(
            lambda s: run_client_module("bench.tenant_load", {"url": url, "schedule": s,
                                                              "timeout_s": timeout_s}, ROOT),
            schedules))
    return {"results": [tuple(r) for run in runs for r in run["results"]],
            "client_lag_max_ms": max(run["client_lag_max_ms"] for run in runs)}


def phase_rates(phase: str, capacity: float, models: int) -> list[dict[str, float]]:
    """The offered load of a phase, one dict per client process."""
    quiet = {m: 0.05 * capacity for m in quiet_ids(models)}
    if phase == "alone":
        return [quiet]
    if phase == "flood":
        return [quiet, {NOISY: 10 * capacity}]
    return [{BIG: 10 * capacity}, {SMALL: capacity}]


def run_phase(server: Server, phase: str, args: argparse.Namespace, capacity: float) -> dict:
    span = args.warmup + args.seconds
    seed = args.seed + PHASES.index(phase)
    schedules = [schedule(rates, span, seed) for rates in phase_rates(phase, capacity, args.models)]
    run = _clients(server.url, schedules, timeout_s=span + 60)
    results = run["results"]
    per_model = summarize(results, args.warmup, args.seconds)
    quiet = quiet_figures(results, quiet_ids(args.models), args.warmup, args.seconds)
    row = {"phase": phase, **quiet, "client_lag_max_ms": run["client_lag_max_ms"],
           "quiet_ok_per_s": round(sum(e["ok_per_s"] for m, e in per_model.items()
                                       if m.startswith("quiet-")), 2),
           "per_model": per_model}
    for key in (NOISY, BIG, SMALL):
        if key in per_model:
            row[f"{key}_ok_per_s"] = per_model[key]["ok_per_s"]
            row[f"{key}_shed"] = per_model[key]["shed"]
    return row


def warm(url: str, args: argparse.Namespace) -> None:
    """Load every id first, a few requests each, so no phase measures a load."""
    ids = [*quiet_ids(args.models), NOISY, BIG, SMALL]
    run_client_module("bench.tenant_load", {
        "url": url, "timeout_s": 60,
        "schedule": [(0.05 * i, m) for i, m in enumerate(ids * 4)],
    }, ROOT)


def run_system(name: str, args: argparse.Namespace, capacity: float, workdir: str) -> list[dict]:
    system, fairness = SYSTEMS[name]
    app_kwargs = {"replicas": args.replicas, "max_ongoing": args.max_ongoing,
                  "max_queued": args.max_queued, "models": args.models + 2,
                  "infer_s": args.infer_ms / 1000, "load_s": args.load_ms / 1000,
                  "fairness": fairness}
    rows = []
    with Server(Target(system), "tenants", app_kwargs, os.path.join(workdir, "drivers.log")) as server:
        warm(server.url, args)
        for phase in PHASES:
            row = {"system": name, "label": LABELS[name], **run_phase(server, phase, args, capacity)}
            print(json.dumps({k: v for k, v in row.items() if k != "per_model"}), flush=True)
            rows.append(row)
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.tenants", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--quick", action="store_true", help="12 s phases: ~3 minutes for modelplex and Ray")
    add("--systems", default="modelplex,ray", help="comma-separated: modelplex, modelplex-fifo, ray")
    add("--replicas", type=int, default=2)
    add("--max-ongoing", type=int, default=4, help="max_ongoing_requests per replica")
    add("--max-queued", type=int, default=32, help="max_queued_requests, both systems")
    add("--models", type=int, default=10, help="model ids of the flood phase (one is noisy)")
    add("--infer-ms", type=float, default=500.0, help="mean slot time of a request")
    add("--load-ms", type=float, default=20.0, help="a model's load (in the warm-up)")
    add("--seconds", type=float, help="measured seconds per phase (default 40, --quick 12)")
    add("--warmup", type=float, help="unmeasured seconds first (default 5, --quick 3)")
    add("--seed", type=int, default=0)
    args = parser.parse_args()
    base = SETTINGS["quick" if args.quick else "full"]
    args.seconds = args.seconds or base["seconds"]
    args.warmup = args.warmup or base["warmup"]
    return args


def main() -> None:
    args = parse_args()
    capacity = args.replicas * args.max_ongoing / (args.infer_ms / 1000)
    config = {k: v for k, v in vars(args).items()} | {"capacity_per_s": capacity}
    print(json.dumps({"scenario": "tenants", "config": config}), flush=True)
    results: dict[str, Any] = {"config": config, "rows": [], "notes": [],
                               "load_before": os.getloadavg()}
    systems = args.systems.split(",")
    if "ray" in systems and (why := ray_available()) is not None:
        systems.remove("ray")
        results["notes"].append(f"Ray Serve skipped: {why}")
    workdir = tempfile.mkdtemp(prefix="bench-tenants-")
    t0 = time.monotonic()
    for name in systems:
        try:
            results["rows"] += run_system(name, args, capacity, workdir)
        except (SkipTarget, RuntimeError) as exc:
            print(json.dumps({"system": name, "failed": str(exc)[-500:]}), flush=True)
            results["notes"].append(f"{name} failed (drivers' log: {workdir}/drivers.log): "
                                    f"{str(exc)[-200:]}")
    results["duration_s"] = round(time.monotonic() - t0, 1)
    results["load_after"] = os.getloadavg()
    results["checks"] = checks(results["rows"], capacity)
    results_dir = os.path.join(ROOT, "bench", "results")
    os.makedirs(results_dir, exist_ok=True)
    saved = os.path.join(results_dir, f"tenants-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(saved, "w") as f:
        json.dump(results, f, indent=1)
    load = results["load_before"]
    print("\n".join([
        "", f"capacity C = {capacity:g} requests/s; load average before the run "
            f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", "",
        table(results["rows"], COLUMNS), "",
        per_id_table(results["rows"], quiet_ids(args.models)), "",
        *targets_and_notes(results["checks"], results["notes"]),
        f"- saved to {os.path.relpath(saved, ROOT)}", ""]))


if __name__ == "__main__":
    main()
