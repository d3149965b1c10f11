"""torch end to end: modelplex against Ray Serve 2.60, side by side in one run.

    python -m bench.torch [--quick] [--systems modelplex,ray] [--scenarios mlp,adapters]

- **mlp**: 40 torch MLPs of 10.5 MB (state dicts on disk), Zipf(1.0) popularity, 2 replicas
  with ``num_cpus: 1`` and 4 model slots each. A miss ``torch.load``s the state dict; every
  request runs a real forward pass of a 16-row batch. A closed loop of HTTP clients in its own
  process replays one trace from cold. Throughput, p50, p99, hit rate (1 - loads / requests)
  and the threads each replica had (OS threads, and ``torch.get_num_threads()``).
- **adapters**: ``examples/peft_lora.py`` (a transformers base per replica, peft LoRA
  adapters from a moto S3 server), the same code under both systems: modelplex fetches
  adapters with ``serve.fetch``, Ray Serve downloads them per load. 20 adapters, 3 per
  replica, Zipf(1.0), streamed completions from concurrent clients in their own process
  (``bench.adapter_load``): tokens per second and time to first token.

The deployments (``bench.torch_app``) run in a driver process per system
(``bench.targets.Server``). Prints one JSON line per run, Markdown tables, the targets
(mlp: throughput >= 3x Ray's, p99 <= 1/3 of Ray's) and a summary line with the ratios last;
saves the run to ``bench/results/torch-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any

from .client import percentile, run_client_module, run_http_client
from .report import table, targets_and_notes
from .targets import ROOT, Server, SkipTarget, Target, ray_available
from .torch_app import read_loads, write_models
from .trace import make_trace

__all__ = ["compare", "mlp_checks", "replica_threads", "summarize_loads"]

SCENARIOS = ("mlp", "adapters")
SETTINGS = {
    "full": {"requests": 3000, "concurrency": 16, "completions": 240,
             "adapter_concurrency": 16, "max_tokens": 32},
    "quick": {"requests": 800, "concurrency": 16, "completions": 60,
              "adapter_concurrency": 8, "max_tokens": 16},
}
PROMPTS = ["the quiet sea", "a ship of gold sails at night", "winter", "tell me of the harbor",
           "old songs of fire and rain", "the captain and the parrot"]
MLP_COLUMNS = (("system", "label"), ("requests", "requests"), ("req/s", "throughput_rps"),
               ("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"), ("hit rate", "hit_rate"),
               ("loads", "loads"), ("load p50 ms", "load_p50_ms"),
               ("threads/replica (OS, torch)", "threads"), ("errors", "errors"),
               ("startup s", "startup_s"))
ADAPTER_COLUMNS = (("system", "label"), ("completions", "completions"),
                   ("tokens/s", "tokens_per_s"), ("TTFT p50 ms", "ttft_p50_ms"),
                   ("TTFT p90 ms", "ttft_p90_ms"), ("TTFT p99 ms", "ttft_p99_ms"),
                   ("completion p50 s", "completion_p50_s"), ("errors", "errors"),
                   ("startup s", "startup_s"))


def summarize_loads(loads: list[dict], requests: int) -> dict:
    """Loads, hit rate and load time from the replicas' load lines."""
    times = sorted(line["load_ms"] for line in loads)
    return {"loads": len(loads),
            "hit_rate": round(1 - len(loads) / requests, 4) if requests else 0.0,
            "load_p50_ms": round(percentile(times, 50), 1)}


def replica_threads(loads: list[dict]) -> str:
    """Per replica, the most OS threads and torch threads it had at a load: "os/torch" each."""
    most: dict[int, tuple[int, int]] = {}
    for line in loads:
        seen = most.get(line["pid"], (0, 0))
        most[line["pid"]] = (max(seen[0], line["os_threads"]),
                             max(seen[1], line["torch_threads"]))
    return ", ".join(f"{os_threads}/{torch_threads}"
                     for os_threads, torch_threads in sorted(most.values()))


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def compare(rows: list[dict]) -> dict:
    """modelplex/Ray ratios per scenario both systems ran; a run with errors meets no target."""
    out: dict[str, Any] = {}
    for scenario in SCENARIOS:
        mine = next((r for r in rows if r["system"] == "modelplex"
                     and r["scenario"] == scenario and r.get("policy", "lru") == "lru"), None)
        ray = next((r for r in rows if r["system"] == "ray" and r["scenario"] == scenario), None)
        if mine is None or ray is None:
            continue
        clean = mine["errors"] == 0
        if scenario == "mlp":
            throughput = _ratio(mine["throughput_rps"], ray["throughput_rps"])
            p99 = _ratio(mine["p99_ms"], ray["p99_ms"])
            out[scenario] = {
                "throughput_ratio": throughput, "p99_ratio": p99,
                "p50_ratio": _ratio(mine["p50_ms"], ray["p50_ms"]),
                "hit_rate": [mine["hit_rate"], ray["hit_rate"]],
                "targets_met": {
                    "throughput_3x": clean and throughput is not None and throughput >= 3.0,
                    "p99_third": clean and p99 is not None and p99 <= 1 / 3}}
        else:
            out[scenario] = {
                "tokens_per_s_ratio": _ratio(mine["tokens_per_s"], ray["tokens_per_s"]),
                "ttft_p50_ratio": _ratio(mine["ttft_p50_ms"], ray["ttft_p50_ms"]),
                "ttft_p99_ratio": _ratio(mine["ttft_p99_ms"], ray["ttft_p99_ms"])}
    return out


def mlp_checks(ratios: dict) -> list[dict]:
    """``compare``'s mlp targets as rows for ``bench.report.targets_and_notes``."""
    if "mlp" not in ratios:
        return []
    mlp = ratios["mlp"]
    return [{"target": "mlp: throughput >= 3x Ray Serve's", "value": mlp["throughput_ratio"],
             "met": mlp["targets_met"]["throughput_3x"]},
            {"target": "mlp: p99 <= 1/3 of Ray Serve's", "value": mlp["p99_ratio"],
             "met": mlp["targets_met"]["p99_third"]}]


def run_mlp(target: Target, args: argparse.Namespace, ids: list[str], concurrency: int,
            model_dir: str, workdir: str) -> dict:
    system = target.system
    loads_dir = tempfile.mkdtemp(prefix=f"loads-{system}-", dir=workdir)
    kwargs = {"replicas": args.replicas, "slots": args.slots, "max_ongoing": args.max_ongoing,
              "model_dir": model_dir, "loads_dir": loads_dir}
    if target.policy is not None:
        kwargs["eviction_policy"] = target.policy
    with Server(target, "torch_mlp", kwargs, os.path.join(workdir, "drivers.log")) as server:
        figures = run_http_client({"url": server.url, "ids": ids, "concurrency": concurrency},
                                  ROOT)
    loads = read_loads(loads_dir)
    return {"scenario": "mlp", "system": system, "policy": target.policy or "lru",
            "label": target.label.replace(" lru", ""),
            **figures, **summarize_loads(loads, figures["requests"]),
            "threads": replica_threads(loads), **server.ready}


def run_adapters(system: str, args: argparse.Namespace, spec: dict, store: str,
                 workdir: str) -> dict:
    kwargs = {"system": system, "store": store, "replicas": args.replicas,
              "adapters_per_replica": 3, "max_batch_size": 8}
    target = Target(system)
    with Server(target, "torch_adapters", kwargs, os.path.join(workdir, "drivers.log"),
                timeout_s=300) as server:
        figures = run_client_module("bench.adapter_load", {"url": server.url, **spec}, ROOT)
    return {"scenario": "adapters", "system": system, "label": target.label.replace(" lru", ""),
            **figures, **server.ready}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.torch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--quick", action="store_true", help="fewer requests and completions (~4 minutes)")
    add("--systems", default="modelplex,ray", help="comma-separated: modelplex, ray")
    add("--scenarios", default=",".join(SCENARIOS), help="comma-separated: mlp, adapters")
    add("--requests", type=int, help="mlp: requests in the trace (default 3000, --quick 800)")
    add("--concurrency", type=int, help="mlp: clients (default 16)")
    add("--models", type=int, default=40)
    add("--zipf", type=float, default=1.0)
    add("--replicas", type=int, default=2)
    add("--slots", type=int, default=4)
    add("--max-ongoing", type=int, default=8, help="max_ongoing_requests per replica")
    add("--policies", default="lru,tinylfu",
        help="mlp: modelplex's eviction policies to run (lru, the default, is compared)")
    add("--completions", type=int, help="adapters: completions (default 240, --quick 60)")
    add("--max-tokens", type=int, help="adapters: tokens per completion (default 32)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    base = SETTINGS["quick" if args.quick else "full"]
    requests = args.requests or base["requests"]
    concurrency = args.concurrency or base["concurrency"]
    results: dict[str, Any] = {"config": {
        "requests": requests, "concurrency": concurrency, "models": args.models,
        "zipf": args.zipf, "replicas": args.replicas, "slots": args.slots,
        "max_ongoing": args.max_ongoing, "completions": args.completions or base["completions"],
        "adapter_concurrency": base["adapter_concurrency"],
        "max_tokens": args.max_tokens or base["max_tokens"],
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()},
        "rows": [], "notes": []}
    print(json.dumps({"scenario": "torch", "config": results["config"]}), flush=True)
    systems = args.systems.split(",")
    if "ray" in systems and (why := ray_available()) is not None:
        print(json.dumps({"system": "ray", "skipped": why}), flush=True)
        results["notes"].append(f"ray skipped: {why}")
        systems.remove("ray")
    workdir = tempfile.mkdtemp(prefix="bench-torch-")
    t0 = time.monotonic()

    def record(run: Any, *run_args: Any) -> None:
        try:
            row = run(*run_args)
        except SkipTarget as exc:
            print(json.dumps({"skipped": str(exc)}), flush=True)
            return
        except RuntimeError as exc:  # a driver or a client failed: on to the others
            print(json.dumps({"failed": str(exc)[-500:]}), flush=True)
            results["notes"].append(f"{run.__name__} failed (drivers' log: "
                                    f"{os.path.join(workdir, 'drivers.log')}): {str(exc)[-200:]}")
            return
        results["rows"].append(row)
        print(json.dumps(row), flush=True)

    scenarios = args.scenarios.split(",")
    if "mlp" in scenarios:
        trace = make_trace(num_models=args.models, num_requests=requests, s=args.zipf, seed=0)
        model_dir = tempfile.mkdtemp(prefix="models-", dir=workdir)
        size = write_models(model_dir, [str(i) for i in range(args.models)])
        results["config"].update(model_bytes=size, trace=trace.digest())
        targets = [Target(s) for s in systems]
        if "modelplex" in systems and "tinylfu" in args.policies.split(","):
            targets.insert(systems.index("modelplex") + 1, Target("modelplex", policy="tinylfu"))
        for target in targets:
            record(run_mlp, target, args, list(trace.model_ids), concurrency, model_dir, workdir)
    if "adapters" in scenarios:
        run_adapter_scenario(args, base, systems, workdir, results, record)
    results["duration_s"] = round(time.monotonic() - t0, 1)
    results["config"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["ratios"] = compare(results["rows"])
    results_dir = os.path.join(ROOT, "bench", "results")
    os.makedirs(results_dir, exist_ok=True)
    saved = os.path.join(results_dir, f"torch-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(saved, "w") as f:
        json.dump(results, f, indent=1)
    mlp_rows = [r for r in results["rows"] if r["scenario"] == "mlp"]
    adapter_rows = [r for r in results["rows"] if r["scenario"] == "adapters"]
    print("\n".join(["", table(mlp_rows, MLP_COLUMNS), "", table(adapter_rows, ADAPTER_COLUMNS),
                     "", *targets_and_notes(mlp_checks(results["ratios"]), results["notes"]),
                     f"- load average {results['config']['loadavg_at_start']} at the start, "
                     f"{results['config']['loadavg_at_end']} at the end",
                     f"- saved to {os.path.relpath(saved, ROOT)}", ""]))
    print(json.dumps({"summary": results["ratios"]}), flush=True)


def run_adapter_scenario(args: argparse.Namespace, base: dict, systems: list[str],
                         workdir: str, results: dict, record: Any) -> None:
    """One moto server and one store of 20 adapters for both systems."""
    from examples.peft_lora import publish_adapters

    from .s3_server import S3Server

    completions = args.completions or base["completions"]
    trace = make_trace(num_models=20, num_requests=completions, s=args.zipf, seed=1)
    adapters = [f"lora-{int(i):02d}" for i in trace.model_ids]
    spec = {"adapters": adapters, "prompts": PROMPTS, "concurrency": base["adapter_concurrency"],
            "max_tokens": args.max_tokens or base["max_tokens"]}
    saved_env = dict(os.environ)
    with S3Server() as s3:
        try:
            os.environ.update(s3.env)  # the drivers, replicas and Ray workers inherit it
            os.environ["MODELPLEX_CACHE_DIR"] = tempfile.mkdtemp(prefix="cache-", dir=workdir)
            publish_adapters("s3://adapters", [f"lora-{i:02d}" for i in range(20)])
            for system in systems:
                record(run_adapters, system, args, spec, "s3://adapters", workdir)
        finally:
            os.environ.clear()
            os.environ.update(saved_env)


if __name__ == "__main__":
    main()
