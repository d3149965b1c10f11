"""modelplex against Ray Serve and the ideal caches, side by side in one run.

    python -m bench                         # everything: ~20 minutes on 2 cores
    python -m bench --quick --systems modelplex     # a smoke test, under a minute

Replays one seeded Zipf trace (its digest is printed: two runs replay the same requests)
against each system, with emulated loads (sleep) and real ones (``np.load`` of a weight file),
at each ``max_ongoing_requests``; then the no-op overhead (HTTP, handle, bare uvicorn), and a
sweep of cache slots per replica drawn to ``docs/bench_slots.png``. Each run prints one JSON
line; everything goes to ``bench/results/<timestamp>.json``, and a summary is printed last.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time

from . import report
from .plot import plot_slots
from .runs import Settings, make_weights, references, run_overhead, run_trace
from .targets import ROOT, SkipTarget, Target, ray_available
from .trace import make_trace

DEFAULTS = dict(mode="both", systems="modelplex,ray", modelplex_backends="local",
                max_ongoing="5,16", requests=2000, models=50, zipf=1.1, seed=0, replicas=2,
                slots=4, concurrency=16, load_ms=200.0, infer_ms=2.0, weight_mb=32.0,
                sweep_slots="1,2,4,6,8", overhead_seconds=10.0, overhead_warmup=5.0,
                plot=os.path.join(ROOT, "docs", "bench_slots.png"))
QUICK = dict(DEFAULTS, systems="modelplex", requests=150, models=10, load_ms=20.0,
             weight_mb=1.0, sweep_slots="1,4", overhead_seconds=1.5, overhead_warmup=0.5,
             plot=None)  # None: next to the results file, so docs/ keeps the full run's figure


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--mode", choices=("emulated", "real", "both"), help="load mode (default both)")
    add("--systems", help="comma-separated: modelplex, ray (default both)")
    add("--modelplex-backends", help="comma-separated: local, ray (default local)")
    add("--max-ongoing", help="max_ongoing_requests values (default 5,16)")
    add("--requests", type=int, help="trace length (default 2000)")
    add("--models", type=int, help="distinct model ids (default 50)")
    add("--zipf", type=float, help="Zipf exponent s (default 1.1)")
    add("--seed", type=int, help="trace seed (default 0)")
    add("--replicas", type=int, help="replicas (default 2)")
    add("--slots", type=int, help="max_num_models_per_replica (default 4)")
    add("--concurrency", type=int, help="client concurrency (default 16)")
    add("--load-ms", type=float, help="emulated load time (default 200)")
    add("--infer-ms", type=float, help="inference time (default 2)")
    add("--weight-mb", type=float, help="weight file size in real mode (default 32)")
    add("--sweep-slots", help="K values of the slots sweep (default 1,2,4,6,8)")
    add("--overhead-seconds", type=float, help="measured seconds per no-op case (default 10)")
    add("--overhead-warmup", type=float, help="unmeasured warm-up seconds (default 5)")
    add("--plot", help="where the sweep figure goes (default docs/bench_slots.png)")
    add("--skip-overhead", action="store_true")
    add("--skip-sweep", action="store_true")
    add("--only", choices=("trace", "overhead", "sweep"), help="run this section alone")
    add("--rounds", type=int, default=1,
        help="no-op overhead: run every system this many times, interleaved (default 1)")
    add("--metrics-cost", action="store_true",
        help="no-op overhead: also run modelplex with metrics off (MODELPLEX_METRICS=0)")
    add("--access-log-cost", action="store_true",
        help="no-op overhead: also run modelplex with its access log off (both flags: also "
             "with both off)")
    add("--baseline", metavar="CHECKOUT",
        help="also run modelplex from another checkout (e.g. a worktree of an older commit)")
    add("--quick", action="store_true", help="small settings: a smoke test in under a minute")
    args = parser.parse_args()
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.only is not None:
        args.skip_trace = args.only != "trace"
        args.skip_overhead = args.only != "overhead"
        args.skip_sweep = args.only != "sweep"
    else:
        args.skip_trace = False
    if args.baseline is not None:
        args.baseline = os.path.abspath(args.baseline)
    return args


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


class Bench:
    """Runs everything the arguments ask for, saving the results file after every run."""

    def __init__(self, args: argparse.Namespace, settings: Settings, path: str) -> None:
        self.args = args
        self.settings = settings
        self.path = path
        self.skipped: set[Target] = set()
        self.results: dict = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine(),
            "config": {k: v for k, v in vars(args).items() if k != "plot"},
            "runs": [], "overhead": [], "notes": [],
        }

    def save(self) -> None:
        with open(self.path + ".tmp", "w") as f:
            json.dump(self.results, f, indent=1)
        os.replace(self.path + ".tmp", self.path)

    def note(self, text: str) -> None:
        print(f"# {text}", flush=True)
        self.results["notes"].append(text)

    def attempt(self, target: Target, run, *args, **kwargs):
        """``run(target, ...)``, or None with a note if the target is skipped or fails."""
        if target in self.skipped:
            return None
        try:
            return run(target, *args, **kwargs)
        except SkipTarget as exc:
            self.skipped.add(target)
            self.note(f"skipped {target.label}: {exc}")
        except RuntimeError as exc:
            self.note(f"{target.label} failed: {exc}")
        return None

    def record(self, key: str, rows: list[dict]) -> None:
        for row in rows:
            print(json.dumps(row), flush=True)
        self.results[key].extend(rows)
        self.save()


def machine() -> dict:
    try:
        with open("/proc/meminfo") as f:
            mem_gib = round(int(f.readline().split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        mem_gib = None
    try:
        from importlib.metadata import version

        ray_version = version("ray")
    except Exception:
        ray_version = None
    return {"cpus": os.cpu_count(), "memory_gib": mem_gib, "python": platform.python_version(),
            "platform": platform.platform(terse=True), "ray": ray_version}


def trace_targets(args: argparse.Namespace, bench: Bench) -> list[Target]:
    targets = []
    systems = names(args.systems)
    if "modelplex" in systems:
        for backend in names(args.modelplex_backends):
            targets += [Target("modelplex", backend), Target("modelplex", backend, "tinylfu")]
            if args.baseline is not None:
                targets += [Target("modelplex", backend, root=args.baseline),
                            Target("modelplex", backend, "tinylfu", root=args.baseline)]
    if "ray" in systems:
        why = ray_available()
        if why is None:
            targets.append(Target("ray"))
        else:
            bench.note(f"Ray Serve skipped: `from ray import serve` fails here ({why})")
    return targets


def main() -> None:
    args = parse_args()
    t0 = time.monotonic()
    results_dir = os.path.join(ROOT, "bench", "results")
    os.makedirs(results_dir, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = tempfile.mkdtemp(prefix="modelplex-bench-")
    settings = Settings(
        replicas=args.replicas, slots=args.slots, concurrency=args.concurrency,
        load_s=args.load_ms / 1000, infer_s=args.infer_ms / 1000,
        overhead_warmup_s=args.overhead_warmup, overhead_seconds=args.overhead_seconds,
        workdir=workdir,
    )
    bench = Bench(args, settings, os.path.join(results_dir, f"{stamp}.json"))
    trace = make_trace(args.models, args.requests, args.zipf, args.seed)
    capacity = args.replicas * args.slots
    bench.results["trace"] = {"digest": trace.digest(), "models": trace.num_models,
                              "requests": trace.num_requests, "s": trace.s, "seed": trace.seed}
    bench.results["references"] = {"capacity": capacity, **references(trace.model_ids, capacity)}
    print(json.dumps({"trace": bench.results["trace"], "references": bench.results["references"]}),
          flush=True)
    targets = trace_targets(args, bench)
    modes = ("emulated", "real") if args.mode == "both" else (args.mode,)
    failed = False
    try:
        for mode in modes if not args.skip_trace else ():
            weights_dir = ""
            if mode == "real":
                weights_dir = tempfile.mkdtemp(prefix="weights-", dir=workdir)
                make_weights(weights_dir, args.models, args.weight_mb)
            for max_ongoing in ints(args.max_ongoing):
                for target in targets:
                    row = bench.attempt(target, run_trace, settings, trace, mode=mode,
                                        max_ongoing=max_ongoing, weights_dir=weights_dir)
                    failed |= row is None and target not in bench.skipped
                    bench.record("runs", [row] if row else [])
            if weights_dir:
                shutil.rmtree(weights_dir, ignore_errors=True)
        if not args.skip_overhead:
            overhead(args, bench, targets)
        if not args.skip_sweep and "modelplex" in names(args.systems):
            sweep(args, bench, trace, results_dir, stamp)
    finally:
        bench.results["duration_s"] = round(time.monotonic() - t0, 1)
        bench.results["targets"] = report.check_targets(bench.results)
        bench.save()
        if failed:
            print(f"# driver logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"trace {trace.digest()}: {trace.num_requests} requests over {trace.num_models} models, "
          f"Zipf s={trace.s}, seed {trace.seed}; {args.replicas} replicas x {args.slots} slots, "
          f"concurrency {args.concurrency}; {bench.results['duration_s']} s in all")
    print(report.summary(bench.results))
    print(f"\nresults: {os.path.relpath(bench.path, ROOT)}")


def overhead(args: argparse.Namespace, bench: Bench, targets: list[Target]) -> None:
    """No-op deployments at the largest max_ongoing_requests, so nothing queues at the router.

    With ``--rounds`` every system runs once per round, in the same order, so a slow spell of a
    shared machine falls on all of them; each row carries its round.
    """
    max_ongoing = max(ints(args.max_ongoing))
    systems = [t for t in targets if t.policy is None]  # the eviction policy plays no part
    # Each modelplex target of this checkout right after itself with metrics and/or its
    # access log off, so each pair shares a round of the machine's weather.
    offs = [{"metrics": False}] if args.metrics_cost else []
    offs += [{"access_log": False}] if args.access_log_cost else []
    if args.metrics_cost and args.access_log_cost:
        offs.append({"metrics": False, "access_log": False})
    systems = [v for t in systems for v in (
        (t, *(dataclasses.replace(t, **off) for off in offs))
        if t.system == "modelplex" and t.root is None else (t,))]
    for round_ in range(args.rounds):
        for target in systems + [Target("uvicorn")]:
            via = ("http",) if target.system == "uvicorn" else ("http", "handle")
            rows = bench.attempt(target, run_overhead, bench.settings, max_ongoing=max_ongoing,
                                 via=via)
            bench.record("overhead", [dict(row, round=round_) for row in rows or []])


def sweep(args: argparse.Namespace, bench: Bench, trace, results_dir: str, stamp: str) -> None:
    """Hit rate and p99 against slots per replica: modelplex LRU and TinyLFU, emulated loads."""
    max_ongoing = ints(args.max_ongoing)[0]
    ks = ints(args.sweep_slots)
    bench.results["sweep"] = {
        "mode": "emulated", "max_ongoing": max_ongoing, "rows": [],
        "references": {k: references(trace.model_ids, args.replicas * k) for k in ks},
    }
    backend = names(args.modelplex_backends)[0]
    for policy in (None, "tinylfu"):
        for k in ks:
            row = bench.attempt(Target("modelplex", backend, policy), run_trace, bench.settings,
                                trace, mode="emulated", max_ongoing=max_ongoing, slots=k)
            if row:
                row["kind"] = "sweep"
                print(json.dumps(row), flush=True)
                bench.results["sweep"]["rows"].append(row)
                bench.save()
    path = args.plot or os.path.join(results_dir, f"{stamp}-slots.png")
    plot_slots(bench.results["sweep"]["rows"], bench.results["sweep"]["references"], path,
               f"trace {trace.digest()}: {trace.num_requests} requests, {trace.num_models} models, "
               f"Zipf {trace.s}; {args.replicas} replicas, concurrency {args.concurrency}, "
               f"max_ongoing {max_ongoing}, load {args.load_ms:g} ms")
    bench.results["sweep"]["plot"] = os.path.relpath(path, ROOT)
    print(f"# slots sweep drawn to {os.path.relpath(path, ROOT)}", flush=True)


if __name__ == "__main__":
    main()
