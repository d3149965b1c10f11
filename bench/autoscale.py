"""Autoscaling side by side: modelplex and Ray Serve 2.60 under bursts of cold models.

    python -m bench.autoscale            # ~4-minute trace per system: ~10-12 minutes on 2 cores
    python -m bench.autoscale --quick    # a ~1-minute trace per system

Both systems serve ``bench.autoscale_app`` (a multiplexed loader that sleeps, a few ms of
inference, few slots per replica) with the same ``autoscaling_config``, and an open-loop client
replays one seeded trace of arrivals (``bench.bursts``: Zipf base load, bursts of cold models,
idle gaps). The replica processes are sampled every 0.5 s (replica-seconds), the replicas log
their loads, unloads and requests (loads of models a scale-down took away). One JSON line per
system, ``bench/results/autoscale-<stamp>.json``, and a summary with the targets come last.

Until modelplex's controller runs the autoscaler, modelplex runs at a fixed ``num_replicas``
(``--modelplex-fixed``), and the output says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from . import autoscale_report
from .__main__ import machine
from .bursts import FULL, QUICK, make_arrivals
from .client import percentile
from .events import read_events
from .open_loop import run_open_loop
from .replica_count import PATTERNS, ReplicaSampler, replica_seconds, stopped
from .scale_events import scale_down_counts
from .targets import ROOT, Server, SkipTarget, Target, ray_available

AUTOSCALING = dict(min_replicas=1, max_replicas=4, target_ongoing_requests=2,
                   upscale_delay_s=3.0, downscale_delay_s=10.0, look_back_period_s=5.0,
                   metrics_interval_s=1.0)
# Ray Serve 2.60 pushes handle and replica metrics at metrics_interval_s; these knobs are the
# replacement it announces. Set to the same interval, for both systems' drivers.
RAY_ENV = ("RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S",
           "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.autoscale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--quick", action="store_true", help="a ~1-minute trace instead of ~4 minutes")
    add("--systems", default="modelplex,ray", help="comma-separated: modelplex, ray")
    add("--seed", type=int, default=0)
    add("--base-models", type=int, default=30)
    add("--base-rate", type=float, default=4.0, help="base requests per second")
    add("--burst-models", type=int, default=20)
    add("--burst-rate", type=float, default=12.0, help="burst requests per second (on top)")
    add("--zipf", type=float, default=1.1)
    add("--slots", type=int, default=4, help="max_num_models_per_replica")
    add("--max-ongoing", type=int, default=5, help="max_ongoing_requests")
    add("--load-ms", type=float, default=250.0)
    add("--infer-ms", type=float, default=5.0)
    add("--max-replicas", type=int, default=AUTOSCALING["max_replicas"])
    add("--modelplex-fixed", type=int, default=None,
        help="run modelplex at this fixed num_replicas (default: only if it cannot autoscale)")
    return parser.parse_args()


def modelplex_autoscales() -> bool:
    """Whether modelplex runs its autoscaling policy: a fresh ``import modelplex`` loads
    ``modelplex._control.autoscale.policy`` only once something in the runtime uses it."""
    code = "import sys, modelplex; print('modelplex._control.autoscale.policy' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=False)
    return proc.stdout.strip() == "True"


def window_p99(latencies: list, windows: list[tuple[float, float]]) -> float:
    ms = sorted(lat for due, lat in latencies if any(a <= due < b for a, b in windows))
    return round(percentile(ms, 99), 2)


def by_segment(trace, latencies: list, samples: list, start: float) -> list[dict]:
    """Per segment of the trace: requests, p50 and p99 of those due in it, replica-seconds."""
    rows, t = [], 0.0
    for seg in trace.segments:
        ms = sorted(lat for due, lat in latencies if t <= due < t + seg.seconds)
        rows.append({"kind": seg.kind, "from_s": t, "to_s": t + seg.seconds, "requests": len(ms),
                     "p50_ms": round(percentile(ms, 50), 1), "p99_ms": round(percentile(ms, 99), 1),
                     "replica_seconds": round(replica_seconds(samples, start + t,
                                                              start + t + seg.seconds), 1)})
        t += seg.seconds
    return rows


def per_window(samples: list, start: float, end: float, width: float = 10.0) -> list[int]:
    """The most replicas seen in each ``width``-second window of the run."""
    out = []
    t = start
    while t < end:
        counts = [len(p) for s, p in samples if t <= s < t + width]
        out.append(max(counts, default=out[-1] if out else 0))
        t += width
    return out


def controller_decisions(path: str, start: float, end: float) -> list[str]:
    """modelplex's controller log lines in the run, as "<s from start> <message>"."""
    try:
        with open(path) as f:
            lines = [line.rstrip("\n").split(" ", 1) for line in f if " " in line]
    except OSError:
        return []
    return [f"{float(t) - start:.1f} {message}" for t, message in lines
            if start - 1 <= float(t) <= end]


def run_system(system: str, trace, args: argparse.Namespace, config: dict | None,
               fixed: int | None, workdir: str) -> dict:
    events_dir = tempfile.mkdtemp(prefix=f"events-{system}-", dir=workdir)
    app_kwargs = dict(slots=args.slots, max_ongoing=args.max_ongoing, load_s=args.load_ms / 1000,
                      infer_s=args.infer_ms / 1000, events_dir=events_dir)
    if fixed is not None:
        app_kwargs["replicas"] = fixed
    else:
        app_kwargs["autoscaling_config"] = config
    target = Target(system)
    log = os.path.join(workdir, "drivers.log")
    controller_log = os.path.join(workdir, f"controller-{system}.log")
    options = {"controller_log": controller_log} if system == "modelplex" else {}
    with Server(target, "autoscale", app_kwargs, log, driver_options=options) as server:
        with ReplicaSampler(server.pid, PATTERNS[system]) as sampler:
            figures = run_open_loop({"url": server.url, "times": list(trace.times),
                                     "ids": list(trace.model_ids), "timeout_s": 120.0,
                                     "until": trace.duration_s}, ROOT)
            time.sleep(0.5)  # a last sample after the last answer
        ready = server.ready
    start = figures.pop("started_at")
    end = start + figures["elapsed_s"]
    events = read_events(events_dir, until=end + 0.2)
    samples = sampler.samples
    gone = stopped(samples, end)
    counts = scale_down_counts(events, gone)
    rs = replica_seconds(samples, start, end)
    latencies = figures.pop("latencies")
    requests = sum(1 for e in events if e["event"] == "request")
    decisions = controller_decisions(controller_log, start, end)
    return {
        "system": system,
        "label": "modelplex" if system == "modelplex" else "Ray Serve 2.60",
        "autoscaled": fixed is None,
        "scaling": f"fixed {fixed}" if fixed is not None else "autoscaling_config",
        "trace": trace.digest(),
        **figures,
        "replica_seconds": round(rs, 1),
        "mean_replicas": round(rs / figures["elapsed_s"], 2) if figures["elapsed_s"] else 0.0,
        "max_replicas": max((len(p) for _, p in samples), default=0),
        "replicas_stopped": len(gone),
        "burst_p99_ms": window_p99(latencies, trace.windows("burst")),
        "loads": counts.loads,
        "hit_rate": round(1 - counts.loads / requests, 4) if requests else 0.0,
        "lost_to_stops": counts.lost,
        "scale_down_reloads": counts.reloads,
        "preloads": counts.preloads,
        "replicas_per_10s": per_window(samples, start, end),
        "segments": by_segment(trace, latencies, samples, start),
        # the deployment's __del__, which Ray Serve calls when it stops a replica
        "replica_del_calls": sum(1 for e in events if e["event"] == "replica_stop"),
        "timeline": [(round(t - start, 2), len(p)) for t, p in samples],
        "decisions": decisions,
        **ready,
    }


def main() -> None:
    args = parse_args()
    t0 = time.monotonic()
    results_dir = os.path.join(ROOT, "bench", "results")
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, f"autoscale-{time.strftime('%Y%m%d-%H%M%S')}.json")
    workdir = tempfile.mkdtemp(prefix="modelplex-autoscale-")
    trace = make_arrivals(QUICK if args.quick else FULL, base_models=args.base_models,
                          base_rate=args.base_rate, burst_models=args.burst_models,
                          burst_rate=args.burst_rate, s=args.zipf, seed=args.seed)
    config = dict(AUTOSCALING, max_replicas=args.max_replicas)
    for name in RAY_ENV:
        os.environ[name] = str(config["metrics_interval_s"])
    fixed = args.modelplex_fixed
    results: dict = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
        "config": {**vars(args), "autoscaling_config": config,
                   "ray_env": {name: os.environ[name] for name in RAY_ENV}},
        "trace": {"digest": trace.digest(), "requests": len(trace),
                  "duration_s": trace.duration_s,
                  "segments": [[s.kind, s.seconds] for s in trace.segments]},
        "runs": [], "notes": [],
    }

    def note(text: str) -> None:
        print(f"# {text}", flush=True)
        results["notes"].append(text)

    def save() -> None:
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(path + ".tmp", path)

    print(json.dumps({"trace": results["trace"], "autoscaling_config": config}), flush=True)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if "modelplex" in systems and fixed is None and not modelplex_autoscales():
        fixed = 2
    if "modelplex" in systems and fixed is not None:
        note(f"modelplex ran at a fixed num_replicas={fixed}, not with the autoscaling_config: "
             "its controller does not autoscale yet")
    failed = False
    try:
        for system in systems:
            if system == "ray" and (why := ray_available()) is not None:
                note(f"Ray Serve skipped: `from ray import serve` fails here ({why})")
                continue
            try:
                row = run_system(system, trace, args, config,
                                 fixed if system == "modelplex" else None, workdir)
            except (SkipTarget, RuntimeError) as exc:
                failed = True
                note(f"{system} failed: {exc}")
                continue
            print(json.dumps({k: v for k, v in row.items() if k != "timeline"}), flush=True)
            results["runs"].append(row)
            save()
    finally:
        results["duration_s"] = round(time.monotonic() - t0, 1)
        results["targets"] = autoscale_report.check_targets(results)
        save()
        if failed:
            print(f"# driver logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"trace {trace.digest()}: {len(trace)} requests over {trace.duration_s:g} s "
          f"({', '.join(f'{s.kind} {s.seconds:g}' for s in trace.segments)}); "
          f"{args.slots} slots, load {args.load_ms:g} ms; {results['duration_s']} s in all")
    print(autoscale_report.summary(results))
    print(f"\nresults: {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()
