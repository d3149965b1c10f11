"""The disk tier against re-downloading: ``serve.fetch`` beside the seed's aioboto3 loader,
against a real S3-compatible server (moto, in its own process, counting what it serves).

    python -m bench.storage             # 16 KB, 32 MB, 256 MB; Ray Serve beside: ~10 minutes
    python -m bench.storage --quick     # a smoke test: small sizes, no Ray Serve

Four parts, side by side in one run, each printed as JSON lines:

- ``paths``: per loader and size, a model's first load (cold: a download), its reload after
  an unload (the seed downloads again; ``serve.fetch`` reads the node's disk) and a memory hit;
- ``at_once``: 4 replicas load one cold model at once (``preload_model``); downloads counted;
- ``bookkeeping``: ``serve.fetch`` of a cold object against a bare fsspec ``get`` of one;
- ``trace``: an eviction-heavy Zipf trace against Ray Serve with the seed's loader, modelplex
  with the seed's loader and modelplex with ``serve.fetch``: bytes downloaded and p99.

Everything goes to ``bench/results/storage-<stamp>.json``; a summary with ratios comes last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from typing import Any, Callable

from .client import run_http_client
from .events import count, read_events
from .s3_server import S3Server
from .storage_report import check_targets, summary
from .targets import ROOT, Server, SkipTarget, Target, ray_available
from .trace import make_trace

BUCKET = "my_bucket"
KB, MB = 1024, 1024 * 1024
DEFAULTS = dict(sizes="16K,32M,256M", reps=3, at_once_replicas=4, at_once_size="32M",
                bookkeeping_size="32M", bookkeeping_reps=5, trace_requests=200, trace_models=8,
                trace_size="8M", zipf=1.1, seed=0, replicas=2, slots=2, concurrency=4,
                systems="modelplex,ray")  # the trace's size: 200 requests load ~100 times
QUICK = dict(DEFAULTS, sizes="16K,1M,4M", reps=2, at_once_size="1M", bookkeeping_size="4M",
             bookkeeping_reps=3, trace_requests=60, trace_size="1M", systems="modelplex")


def parse_size(text: str) -> int:
    """"16K" -> 16384, "32M" -> 33554432, "100" -> 100."""
    text = text.strip().upper()
    scale = {"K": KB, "M": MB, "G": 1024 * MB}.get(text[-1:], 1)
    number = text[:-1] if scale != 1 else text
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (say 16K, 32M or a byte count)") from None
    if value < 128:
        raise ValueError(f"size {text!r} is below 128 bytes, the smallest .npy file")
    return value


def label(size: int) -> str:
    for unit, scale in (("G", 1024 * MB), ("M", MB), ("K", KB)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def npy(size: int, fill: int) -> bytes:
    """A .npy file of exactly ``size`` bytes: a 128-byte header and uint8 ``fill`` values."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.full(size - 128, fill % 256, dtype=np.uint8))
    data = buf.getvalue()
    assert len(data) == size, (len(data), size)
    return data


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else 0.0


class Run:
    """The S3 server, the results file, and a driver per system (fresh caches each)."""

    def __init__(self, args: argparse.Namespace, s3: S3Server, workdir: str, path: str) -> None:
        self.args, self.s3, self.workdir, self.path = args, s3, workdir, path
        self.loaders = [x.strip() for x in args.loaders.split(",") if x.strip()]
        self.results: dict[str, Any] = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": vars(args),
            "paths": [], "at_once": [], "bookkeeping": [], "trace": [], "notes": []}

    def save(self) -> None:
        with open(self.path + ".tmp", "w") as f:
            json.dump(self.results, f, indent=1)
        os.replace(self.path + ".tmp", self.path)

    def record(self, part: str, row: dict) -> None:
        print(json.dumps({"part": part, **row}), flush=True)
        self.results[part].append(row)
        self.save()

    def note(self, text: str) -> None:
        print(f"# {text}", flush=True)
        self.results["notes"].append(text)

    def server(self, target: Target, loader: str, replicas: int, slots: int,
               max_ongoing: int = 8) -> tuple[Server, str]:
        """A driver serving ``bench.storage_app``, with a cache dir of its own (cold)."""
        fresh = tempfile.mkdtemp(prefix="run-", dir=self.workdir)
        os.environ["MODELPLEX_CACHE_DIR"] = os.path.join(fresh, "cache")
        events = os.path.join(fresh, "events")
        os.makedirs(events)
        kwargs = dict(loader=loader, replicas=replicas, slots=slots, max_ongoing=max_ongoing,
                      bucket=BUCKET, download_dir=fresh, events_dir=events)
        server = Server(target, "storage", kwargs, os.path.join(self.workdir, "drivers.log"))
        return server, events

    def downloaded(self, prefix: str = "") -> tuple[int, int]:
        """(downloads, bytes sent) over objects whose key starts with ``prefix``."""
        stats = [s for k, s in self.s3.stats().items() if k.startswith(f"{BUCKET}/{prefix}")]
        return sum(s.downloads for s in stats), sum(s.bytes_sent for s in stats)


def get(url: str, model_id: str) -> float:
    """One request for ``model_id``; its latency in ms."""
    import requests

    t0 = time.perf_counter()
    resp = requests.get(url, headers={"serve_multiplexed_model_id": model_id}, timeout=600)
    ms = (time.perf_counter() - t0) * 1000
    if resp.status_code != 200:
        raise RuntimeError(f"model {model_id}: HTTP {resp.status_code} {resp.text[:200]}")
    return ms


def manage(url: str, op: str, **body: Any) -> dict:
    import requests

    resp = requests.post(f"{url}-/models/{op}", json=body, timeout=600)
    if resp.status_code != 200:
        raise RuntimeError(f"{op} {body}: HTTP {resp.status_code} {resp.text[:200]}")
    return resp.json()


# ---- parts ------------------------------------------------------------------------------------


def load_paths(run: Run, sizes: list[int]) -> None:
    """Per size: ``reps`` fresh objects, each loaded cold, hit in memory, unloaded, reloaded."""
    for size in sizes:
        run.s3.put(BUCKET, {f"p{label(size)}-{r}/model.pt": npy(size, r) for r in range(run.args.reps)})
    for loader in run.loaders:
        server, _ = run.server(Target("modelplex"), loader, replicas=1, slots=1)
        with server:
            for size in sizes:
                times: dict[str, list[float]] = {"cold": [], "memory": [], "reload": []}
                run.s3.reset()
                for r in range(run.args.reps):
                    model_id = f"p{label(size)}-{r}"
                    times["cold"].append(get(server.url, model_id))
                    times["memory"].append(get(server.url, model_id))
                    manage(server.url, "unload", model_id=model_id)
                    times["reload"].append(get(server.url, model_id))
                    manage(server.url, "unload", model_id=model_id)  # the next rep starts empty
                downloads, sent = run.downloaded(f"p{label(size)}-")
                run.record("paths", {
                    "loader": loader, "size": size, "size_label": label(size), "reps": run.args.reps,
                    **{f"{k}_ms": median(v) for k, v in times.items()},
                    "downloads": downloads, "bytes_downloaded": sent})


def at_once(run: Run) -> None:
    """``at_once_replicas`` replicas preload one cold model at the same moment."""
    size = parse_size(run.args.at_once_size)
    n = run.args.at_once_replicas
    for loader in run.loaders:
        model_id = f"once-{loader}"
        run.s3.put(BUCKET, {f"{model_id}/model.pt": npy(size, 7)})
        server, events = run.server(Target("modelplex"), loader, replicas=n, slots=1)
        with server:
            run.s3.reset()
            t0 = time.perf_counter()
            placed = manage(server.url, "preload", model_id=model_id, replicas=n)["replicas"]
            ms = (time.perf_counter() - t0) * 1000
            downloads, sent = run.downloaded(model_id)
            loads = count(read_events(events)).loads
        run.record("at_once", {"loader": loader, "replicas": len(placed), "loads": loads,
                               "size": size, "size_label": label(size), "wall_ms": round(ms, 1),
                               "downloads": downloads, "bytes_downloaded": sent})


def bookkeeping(run: Run) -> None:
    """Cold ``serve.fetch`` against a bare fsspec ``get`` of same-size objects, alternating."""
    import fsspec

    import modelplex as serve

    if "fetch" not in run.loaders:
        return run.note("bookkeeping skipped: it measures serve.fetch")
    size = parse_size(run.args.bookkeeping_size)
    reps = run.args.bookkeeping_reps
    keys = [f"cost-{r}-{way}/model.pt" for r in range(reps) for way in ("fetch", "fsspec")]
    run.s3.put(BUCKET, {key: npy(size, i) for i, key in enumerate(keys)})
    cache = tempfile.mkdtemp(prefix="cache-", dir=run.workdir)
    os.environ["MODELPLEX_CACHE_DIR"] = cache
    bare_dir = tempfile.mkdtemp(prefix="bare-", dir=run.workdir)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.ls(BUCKET)  # the first call opens the session: not a cost of either path

    loop = asyncio.new_event_loop()  # one loop for every fetch, as in a replica

    def bare(key: str) -> None:
        fs.get(f"{BUCKET}/{key}", os.path.join(bare_dir, key.replace("/", "_")))

    def fetched(key: str) -> None:
        async def as_a_loader() -> str:
            return await serve.fetch(f"s3://{BUCKET}/{key}")

        loop.run_until_complete(as_a_loader())

    times: dict[str, list[float]] = {"fetch": [], "fsspec": [], "warm": []}
    for r in range(reps):
        ways: list[tuple[str, Callable[[str], None]]] = [("fetch", fetched), ("fsspec", bare)]
        for way, call in ways if r % 2 == 0 else ways[::-1]:
            t0 = time.perf_counter()
            call(f"cost-{r}-{way}/model.pt")
            times[way].append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        fetched(f"cost-{r}-fetch/model.pt")  # on disk now: the warm path's fixed cost
        times["warm"].append((time.perf_counter() - t0) * 1000)
    loop.run_until_complete(loop.shutdown_asyncgens())  # closes the fetches' S3 client
    loop.close()
    run.record("bookkeeping", {"size": size, "size_label": label(size), "reps": reps,
                               "fetch_ms": median(times["fetch"]),
                               "fsspec_ms": median(times["fsspec"]),
                               "fetch_warm_ms": median(times["warm"]),
                               "fetch_all_ms": [round(x, 1) for x in times["fetch"]],
                               "fsspec_all_ms": [round(x, 1) for x in times["fsspec"]]})


def trace_runs(run: Run) -> None:
    """The same Zipf trace: Ray Serve + seed, modelplex + seed, modelplex + serve.fetch."""
    args = run.args
    trace = make_trace(args.trace_models, args.trace_requests, args.zipf, args.seed)
    size = parse_size(args.trace_size)
    run.s3.put(BUCKET, {f"{m}/model.pt": npy(size, int(m)) for m in set(trace.model_ids)})
    run.results["trace_digest"] = trace.digest()
    systems = [(Target("modelplex"), loader) for loader in run.loaders]
    if "ray" in args.systems.split(","):
        why = ray_available()
        if why is None:
            systems.insert(0, (Target("ray"), "aioboto3"))
        else:
            run.note(f"Ray Serve skipped: {why}")
    for target, loader in systems:
        run.s3.reset()
        try:
            server, events = run.server(target, loader, args.replicas, args.slots)
        except (SkipTarget, RuntimeError) as exc:
            run.note(f"{target.label} with {loader} did not start: {exc}")
            continue
        with server:
            figures = run_http_client({"url": server.url, "ids": list(trace.model_ids),
                                       "concurrency": args.concurrency}, ROOT)
            time.sleep(0.2)
            loads = count(read_events(events, until=time.time())).loads
        downloads, sent = run.downloaded()
        run.record("trace", {
            "system": target.system, "label": f"{target.label} + {loader}", "loader": loader,
            "trace": trace.digest(), "size": size, "size_label": label(size),
            "replicas": args.replicas, "slots": args.slots, "concurrency": args.concurrency,
            "loads": loads, "downloads": downloads, "bytes_downloaded": sent,
            **{k: figures[k] for k in ("requests", "errors", "throughput_rps", "p50_ms",
                                       "p99_ms", "max_ms", "elapsed_s")}})


# ---- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--sizes", help="artifact sizes of the load paths (default 16K,32M,256M)")
    add("--reps", type=int, help="objects per size (default 3)")
    add("--at-once-replicas", type=int, help="replicas loading one model at once (default 4)")
    add("--at-once-size", help="its size (default 32M)")
    add("--bookkeeping-size", help="object size of the cost comparison (default 32M)")
    add("--bookkeeping-reps", type=int, help="objects per way (default 5)")
    add("--trace-requests", type=int, help="trace length (default 200)")
    add("--trace-models", type=int, help="models in the trace (default 8)")
    add("--trace-size", help="artifact size in the trace (default 8M)")
    add("--zipf", type=float)
    add("--seed", type=int)
    add("--replicas", type=int, help="replicas in the trace (default 2)")
    add("--slots", type=int, help="max_num_models_per_replica in the trace (default 2)")
    add("--concurrency", type=int, help="trace client concurrency (default 4)")
    add("--systems", help="modelplex and/or ray in the trace (default both)")
    add("--loaders", default="aioboto3,fetch", help="the seed's aioboto3 and/or serve.fetch")
    add("--parts", default="paths,at_once,bookkeeping,trace", help="which parts to run")
    add("--quick", action="store_true", help="small sizes, no Ray Serve: a smoke test")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    results_dir = os.path.join(ROOT, "bench", "results")
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, f"storage-{time.strftime('%Y%m%d-%H%M%S')}.json")
    workdir = tempfile.mkdtemp(prefix="modelplex-bench-storage-")
    t0 = time.monotonic()
    saved_env = dict(os.environ)
    failed = True
    with S3Server() as s3:
        os.environ.update(s3.env)  # the drivers, replicas and Ray workers inherit it
        run = Run(args, s3, workdir, path)
        try:
            for part in parts:
                {"paths": lambda: load_paths(run, sizes), "at_once": lambda: at_once(run),
                 "bookkeeping": lambda: bookkeeping(run), "trace": lambda: trace_runs(run)}[part]()
            failed = False
        finally:
            run.results["duration_s"] = round(time.monotonic() - t0, 1)
            run.results["targets"] = check_targets(run.results)
            run.save()
            os.environ.clear()
            os.environ.update(saved_env)
            if failed:
                print(f"# driver logs kept in {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(summary(run.results))
    print(f"\nresults: {os.path.relpath(path, ROOT)} ({run.results['duration_s']} s)")


if __name__ == "__main__":
    main()
