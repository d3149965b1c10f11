"""gRPC: modelplex against Ray Serve 2.60, unary calls through each system's gRPC proxy.

    python -m bench.grpc [--quick] [--systems modelplex,ray] [--cases noop,multiplexed]

One deployment (``bench.grpc_app``), written once against Ray Serve's API, runs under
``import modelplex as serve`` and ``from ray import serve``, side by side in one run, each
system in a driver process of its own (``bench.targets.Server``), with the same
``grpc_options``. A ``grpcio`` asyncio client in a process of its own (``bench.grpc_load``)
keeps ``concurrency`` calls in flight for ``seconds`` after a ``warmup``:

- **noop**: ``Noop`` returns an empty reply: the proxy's and the router's cost per call;
- **multiplexed**: ``Infer`` with ``multiplexed_model_id`` metadata over a few model ids that
  all fit in the replicas' caches (loaded in the warm-up): routing by model.

Prints one JSON line per system and case, a Markdown table, the targets (requests per second
>= 3x Ray's, p99 <= 1/3 of Ray's) and a summary line with the modelplex/Ray ratios. The run is
saved to ``bench/results/grpc-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any

from .report import table, targets_and_notes
from .targets import ROOT, Server, SkipTarget, Target, free_port, ray_available

__all__ = ["checks", "compare"]

CASES = {"noop": "Noop", "multiplexed": "Infer"}
SETTINGS = {"full": {"seconds": 15.0, "warmup": 5.0}, "quick": {"seconds": 4.0, "warmup": 2.0}}
COLUMNS = (("system", "label"), ("case", "case"), ("req/s", "throughput_rps"),
           ("p50 ms", "p50_ms"), ("p90 ms", "p90_ms"), ("p99 ms", "p99_ms"),
           ("max ms", "max_ms"), ("errors", "errors"), ("replicas used", "replicas_used"),
           ("startup s", "startup_s"))


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def compare(rows: list[dict]) -> dict:
    """Per case both systems ran: modelplex/Ray ratios of requests per second and p99, and the
    targets (>= 3x the requests per second, <= 1/3 the p99). A row with errors meets none."""
    out: dict[str, Any] = {}
    for case in CASES:
        mine = next((r for r in rows if r["system"] == "modelplex" and r["case"] == case), None)
        ray = next((r for r in rows if r["system"] == "ray" and r["case"] == case), None)
        if mine is None or ray is None:
            continue
        rps = _ratio(mine["throughput_rps"], ray["throughput_rps"])
        p99 = _ratio(mine["p99_ms"], ray["p99_ms"])
        clean = mine["errors"] == 0
        out[case] = {
            "rps_ratio": rps,
            "p50_ratio": _ratio(mine["p50_ms"], ray["p50_ms"]),
            "p99_ratio": p99,
            "targets_met": {"rps_3x": clean and rps is not None and rps >= 3.0,
                            "p99_third": clean and p99 is not None and p99 <= 1 / 3},
        }
    return out


def checks(ratios: dict) -> list[dict]:
    """``compare``'s targets as rows for ``bench.report.targets_and_notes``."""
    rows = []
    for case, r in ratios.items():
        rows.append({"target": f"{case}: requests/s >= 3x Ray Serve's", "value": r["rps_ratio"],
                     "met": r["targets_met"]["rps_3x"]})
        rows.append({"target": f"{case}: p99 <= 1/3 of Ray Serve's", "value": r["p99_ratio"],
                     "met": r["targets_met"]["p99_third"]})
    return rows


def run_system(system: str, cases: list[str], app_kwargs: dict, load: dict, proto_dir: str,
               workdir: str) -> list[dict]:
    """Every case against one running instance of ``system``."""
    from .grpc_app import SERVICER

    target = Target(system)
    grpc_port = free_port()
    options = {"grpc": {"port": grpc_port, "grpc_servicer_functions": [SERVICER]}}
    log = os.path.join(workdir, "drivers.log")
    rows = []
    with Server(target, "grpc", app_kwargs, log, driver_options=options,
                python_path=(proto_dir,)) as server:
        from .grpc_load import run_grpc_client

        for case in cases:
            spec = {**load, "target": f"127.0.0.1:{grpc_port}", "method": CASES[case],
                    "proto_dir": proto_dir}
            if case == "noop":
                spec["model_ids"] = []
            figures = run_grpc_client(spec, ROOT)
            rows.append({"system": system, "case": case,
                         "label": target.label.replace(" lru", ""),
                         "replicas_used": len(figures.get("requests_per_replica", [])),
                         **figures, **server.ready})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--quick", action="store_true", help="a shorter window: about a minute in all")
    add("--systems", default="modelplex,ray", help="comma-separated: modelplex, ray")
    add("--cases", default=",".join(CASES), help="comma-separated: noop, multiplexed")
    add("--concurrency", type=int, default=16, help="calls in flight")
    add("--models", type=int, default=8, help="model ids, all fitting in a replica's slots")
    add("--load-ms", type=float, default=20.0, help="a model's load (in the warm-up)")
    add("--replicas", type=int, default=2)
    add("--max-ongoing", type=int, default=16, help="max_ongoing_requests per replica")
    add("--seconds", type=float, help="measured seconds per case (default 15, --quick 4)")
    add("--warmup", type=float, help="unmeasured seconds first (default 5, --quick 2)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    base = SETTINGS["quick" if args.quick else "full"]
    app_kwargs = {"replicas": args.replicas, "slots": args.models,
                  "max_ongoing": args.max_ongoing, "load_s": args.load_ms / 1000}
    load = {"concurrency": args.concurrency, "model_ids": [f"m{i}" for i in range(args.models)],
            "seconds": args.seconds or base["seconds"], "warmup": args.warmup or base["warmup"]}
    results: dict[str, Any] = {"config": {**app_kwargs, **load}, "rows": [], "notes": [],
                               "load_before": os.getloadavg()}
    print(json.dumps({"scenario": "grpc", "config": results["config"]}), flush=True)
    systems = args.systems.split(",")
    if "ray" in systems and (why := ray_available()) is not None:
        systems.remove("ray")
        results["notes"].append(f"ray skipped: {why}")
    workdir = tempfile.mkdtemp(prefix="bench-grpc-")
    from .grpc_app import compile_proto

    proto_dir = compile_proto(os.path.join(workdir, "protos"))
    t0 = time.monotonic()
    for system in systems:
        try:
            results["rows"] += run_system(system, args.cases.split(","), app_kwargs, load,
                                          proto_dir, workdir)
        except (SkipTarget, RuntimeError) as exc:
            print(json.dumps({"system": system, "failed": str(exc)[-500:]}), flush=True)
            results["notes"].append(f"{system} failed (drivers' log: "
                                    f"{os.path.join(workdir, 'drivers.log')}): {str(exc)[-200:]}")
    results["duration_s"] = round(time.monotonic() - t0, 1)
    results["load_after"] = os.getloadavg()
    results["ratios"] = compare(results["rows"])
    results_dir = os.path.join(ROOT, "bench", "results")
    os.makedirs(results_dir, exist_ok=True)
    saved = os.path.join(results_dir, f"grpc-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(saved, "w") as f:
        json.dump(results, f, indent=1)
    load_avg = " ".join(f"{x:.2f}" for x in results["load_before"])
    print("\n".join(["", table(results["rows"], COLUMNS), "",
                     *targets_and_notes(checks(results["ratios"]), results["notes"]),
                     f"- load average before the run: {load_avg}",
                     f"- saved to {os.path.relpath(saved, ROOT)}", ""]))
    print(json.dumps({"summary": {
        **{f"{r['system']} {r['case']}": {k: r[k] for k in ("throughput_rps", "p50_ms",
                                                             "p99_ms", "errors")}
           for r in results["rows"]},
        **results["ratios"]}}), flush=True)


if __name__ == "__main__":
    main()
