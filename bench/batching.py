"""``@serve.batch`` under ``@serve.multiplexed``: modelplex against Ray Serve 2.60.

A batched embedding model per model id, 50 ids, Zipf(1.1) popularity, a closed loop of
concurrent HTTP clients. The deployment (``batched_app``) is written once against Ray Serve's
API and runs under ``import modelplex as serve`` and ``from ray import serve``, side by side in
one run, each system in a driver process of its own (``bench.targets.Server``):

    python -m bench.batching [--quick] [--systems modelplex,ray]

A batch costs a fixed ``batch_ms`` plus ``item_ms`` per item (an accelerator's kernel launch
and its work, as an ``asyncio.sleep``), after a real numpy projection of the batch; a cold
model costs ``load_ms``. Prints one JSON line per system, then a summary line with the ratios
(the targets: throughput >= 2x Ray's, p99 <= 1/2 of Ray's).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import tempfile
import zlib
from typing import Any

from .client import run_http_client
from .targets import ROOT, Server, SkipTarget, Target, ray_available
from .trace import make_trace

__all__ = ["batched_app"]


def batched_app(serve: Any, *, replicas: int, slots: int, max_ongoing: int, max_batch_size: int,
                batch_wait_timeout_s: float, load_s: float, batch_s: float, item_s: float) -> Any:
    """The benchmark's batched, multiplexed deployment, bound."""

    @serve.deployment(num_replicas=replicas, max_ongoing_requests=max_ongoing)
    class BatchedEmbedder:
        def __init__(self) -> None:
            import numpy

            self.np = numpy
            self.batch_ids = itertools.count()

        @serve.multiplexed(max_num_models_per_replica=slots)
        async def get_model(self, model_id: str) -> Any:
            await asyncio.sleep(load_s)
            rng = self.np.random.default_rng(zlib.crc32(model_id.encode()))
            return rng.standard_normal((64, 16)).astype(self.np.float32)

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        async def embed(self, texts: list[str]) -> list[dict]:
            model_id = serve.get_multiplexed_model_id()
            weights = await self.get_model(model_id)
            features = self.np.zeros((len(texts), 64), dtype=self.np.float32)
            for row, text in enumerate(texts):
                features[row, zlib.crc32(text.encode()) % 64] = 1.0
            vectors = features @ weights
            await asyncio.sleep(batch_s + item_s * len(texts))
            batch = f"{os.getpid()}-{next(self.batch_ids)}"
            return [{"model": model_id, "pid": os.getpid(), "batch": batch,
                     "batch_size": len(texts), "value": float(v[0])} for v in vectors]

        async def __call__(self, request: Any) -> dict:
            answer = await self.embed(request.url.path)
            if answer["model"] != serve.get_multiplexed_model_id():
                raise RuntimeError("a batch mixed model ids")
            return answer

    return BatchedEmbedder.bind()


SETTINGS = {
    "full": {"requests": 3000, "concurrency": 64},
    "quick": {"requests": 800, "concurrency": 32},
}


def run_one(target: Target, app_kwargs: dict, ids: list[str], concurrency: int,
            workdir: str) -> dict:
    log = os.path.join(workdir, "drivers.log")
    with Server(target, "batched", app_kwargs, log) as server:
        figures = run_http_client({"url": server.url, "ids": ids, "concurrency": concurrency},
                                  ROOT)
    return {"label": target.label.replace(" lru", ""), **figures, **server.ready}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests (~1-2 minutes)")
    parser.add_argument("--systems", default="modelplex,ray")
    parser.add_argument("--requests", type=int)
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--load-ms", type=float, default=100.0)
    parser.add_argument("--batch-ms", type=float, default=10.0)
    parser.add_argument("--item-ms", type=float, default=0.5)
    args = parser.parse_args()
    base = SETTINGS["quick" if args.quick else "full"]
    requests = args.requests or base["requests"]
    concurrency = args.concurrency or base["concurrency"]
    trace = make_trace(num_models=args.models, num_requests=requests, s=args.zipf, seed=0)
    app_kwargs = {
        "replicas": args.replicas, "slots": args.slots, "max_ongoing": concurrency,
        "max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_ms / 1000,
        "load_s": args.load_ms / 1000, "batch_s": args.batch_ms / 1000,
        "item_s": args.item_ms / 1000,
    }
    config = {**app_kwargs, "requests": requests, "concurrency": concurrency,
              "models": args.models, "zipf": args.zipf, "trace": trace.digest()}
    print(json.dumps({"scenario": "batching", "config": config}), flush=True)
    rows: dict[str, dict] = {}
    workdir = tempfile.mkdtemp(prefix="bench-batching-")
    for system in args.systems.split(","):
        if system == "ray" and (why := ray_available()) is not None:
            print(json.dumps({"system": "ray", "skipped": why}), flush=True)
            continue
        try:
            row = run_one(Target(system), app_kwargs, list(trace.model_ids), concurrency,
                          workdir)
        except SkipTarget as exc:
            print(json.dumps({"system": system, "skipped": str(exc)}), flush=True)
            continue
        rows[system] = row
        print(json.dumps({"system": system, **row}), flush=True)
    summary: dict[str, Any] = {
        system: {k: row[k] for k in ("throughput_rps", "p50_ms", "p99_ms", "mean_batch_size",
                                     "errors")}
        for system, row in rows.items()
    }
    if "modelplex" in rows and "ray" in rows:
        mp, ray = rows["modelplex"], rows["ray"]
        summary["throughput_ratio"] = round(mp["throughput_rps"] / ray["throughput_rps"], 2)
        summary["p99_ratio"] = round(mp["p99_ms"] / ray["p99_ms"], 2)
        summary["p50_ratio"] = round(mp["p50_ms"] / ray["p50_ms"], 2)
        summary["targets_met"] = {"throughput_2x": summary["throughput_ratio"] >= 2.0,
                                  "p99_half": summary["p99_ratio"] <= 0.5}
    print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    main()
