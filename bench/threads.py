"""Replicas that share cores: BLAS threads that follow ``num_cpus`` against threads that do not.

    python -m bench.threads            # two rounds of 15 s per case: ~1.5 minutes
    python -m bench.threads --quick    # one round of 4 s per case: ~20 s

Two replicas with ``ray_actor_options={"num_cpus": N / 2}`` on this N-core node, each request
a float64 matrix product in numpy (OpenBLAS), with ``--clients`` callers keeping every replica
busy. ``placed`` is what modelplex does now: each replica's thread variables follow its
``num_cpus`` (as Ray sets ``OMP_NUM_THREADS``). ``unplaced`` is what it did before, and what a
process that sets nothing gets: every replica's BLAS pool as wide as the machine (set here
through ``runtime_env`` ``env_vars``, which win). The cases alternate, round by round, so a
change in the machine's other load falls on both. Prints one JSON line per case and round,
then the medians and the ratios placed / unplaced.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from typing import Any

import modelplex as serve

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def make_app(cores: int, size: int, widen: bool) -> Any:
    options: dict[str, Any] = {"num_cpus": max(1, cores // 2)}
    if widen:
        options["runtime_env"] = {"env_vars": {var: str(cores) for var in THREAD_VARS}}

    @serve.deployment(name="MatMul", num_replicas=2, ray_actor_options=options)
    class MatMul:
        def __init__(self) -> None:
            import numpy as np

            rng = np.random.default_rng(0)
            self.a = rng.standard_normal((size, size))
            self.b = rng.standard_normal((size, size))

        def __call__(self, request: Any = None) -> float:
            return float((self.a @ self.b)[0, 0])

    return MatMul.bind()


def measure(handle: Any, clients: int, warmup_s: float, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    start = time.monotonic()
    begin, end = start + warmup_s, start + warmup_s + seconds

    def client() -> None:
        while True:
            sent = time.monotonic()
            if sent >= end:
                return
            handle.remote().result(timeout_s=60)
            done = time.monotonic()
            if sent >= begin and done <= end:
                with lock:
                    latencies.append(done - sent)

    workers = [threading.Thread(target=client) for _ in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    latencies.sort()
    return {
        "requests_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
        "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.threads", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size", type=int, default=384, help="matrix side (default 384)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent callers (default 8)")
    args = parser.parse_args()
    rounds, seconds, warmup = (1, 4.0, 1.0) if args.quick else (2, 15.0, 3.0)
    for var in THREAD_VARS:  # the placed case must get modelplex's own setting
        os.environ.pop(var, None)
    serve.start(http_options={"port": 0})
    cores = int(serve.status().resources["total"]["CPU"])
    load = os.getloadavg()[0]
    results: dict[str, list[dict[str, float]]] = {"placed": [], "unplaced": []}
    try:
        for round_ in range(rounds):
            for case in ("placed", "unplaced"):
                handle = serve.run(make_app(cores, args.size, case == "unplaced"), name=case)
                got = measure(handle, args.clients, warmup, seconds)
                results[case].append(got)
                print(json.dumps({"case": case, "round": round_, "cores": cores, **got}), flush=True)
                serve.delete(case)
    finally:
        serve.shutdown()
    median = {
        case: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for case, runs in results.items()
    }
    print(f"\n{cores} cores, 2 replicas of num_cpus={max(1, cores // 2)}, {args.size}x{args.size} "
          f"matmul, {args.clients} clients, load average {load:.2f} at the start")
    for case, m in median.items():
        print(f"  {case:9} {m['requests_per_s']:8.1f} req/s  p50 {m['p50_ms']:7.1f} ms  "
              f"p99 {m['p99_ms']:7.1f} ms")
    placed, unplaced = median["placed"], median["unplaced"]
    print(f"  placed / unplaced: throughput {placed['requests_per_s'] / unplaced['requests_per_s']:.2f}x, "
          f"p50 {placed['p50_ms'] / unplaced['p50_ms']:.2f}x, p99 {placed['p99_ms'] / unplaced['p99_ms']:.2f}x")


if __name__ == "__main__":
    main()
