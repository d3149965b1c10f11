"""The gRPC benchmark's client, in a process of its own: a closed loop of ``concurrency``
calls in flight on one ``grpcio`` channel, each next call started from the last one's
completion callback (grpc's own threads). That costs the client a third less CPU per call
than grpcio's asyncio client, which matters on 2 cores shared with the systems under test.

    python -m bench.grpc_load < spec.json      # prints one JSON line of figures
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections import Counter

from .client import summarize

__all__ = ["run_grpc_client"]


def load(spec: dict) -> dict:
    import grpc

    sys.path.insert(0, spec["proto_dir"])
    import bench_service_pb2 as pb2
    import bench_service_pb2_grpc as pb2_grpc

    ids = itertools.cycle(spec.get("model_ids") or [""])
    base = [("application", spec["application"])] if spec.get("application") else []
    channel = grpc.insecure_channel(spec["target"])
    method = getattr(pb2_grpc.BenchStub(channel), spec["method"])
    request = pb2.Ping(text="x")
    lock = threading.Lock()
    latencies: list[float] = []
    bodies: list[dict] = []
    errors: Counter = Counter()
    start = time.perf_counter()
    measure_from = start + spec["warmup"]
    stop_at = measure_from + spec["seconds"]
    running = [spec["concurrency"]]
    done = threading.Event()

    def call() -> None:
        model_id = next(ids)
        metadata = base + ([("multiplexed_model_id", model_id)] if model_id else [])
        sent = time.perf_counter()
        future = method.future(request, metadata=metadata)

        def finished(f: grpc.Future) -> None:
            now = time.perf_counter()
            with lock:
                if sent >= measure_from and now <= stop_at:
                    latencies.append(now - sent)
                    exc = f.exception()
                    if exc is not None:
                        errors[exc.code().name] += 1
                    else:
                        bodies.append({"pid": f.result().pid})
                if now >= stop_at:
                    running[0] -= 1
                    if not running[0]:
                        done.set()
                    return
            call()

        future.add_done_callback(finished)

    for _ in range(spec["concurrency"]):
        call()
    done.wait(spec["warmup"] + spec["seconds"] + 60)
    channel.close()
    return summarize(latencies, errors, spec["seconds"], bodies)


def run_grpc_client(spec: dict, root: str) -> dict:
    """Run the client in a new process and return its figures."""
    proc = subprocess.run([sys.executable, "-m", "bench.grpc_load"], input=json.dumps(spec),
                          capture_output=True, text=True, cwd=root, check=False,
                          timeout=spec["seconds"] + spec["warmup"] + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"the gRPC client failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    print(json.dumps(load(json.loads(sys.stdin.read()))), flush=True)


if __name__ == "__main__":
    main()
