"""Streaming: modelplex against Ray Serve 2.60, through HTTP and through a handle.

    python -m bench.streaming [--quick] [--systems modelplex,ray] [--paths http,handle]

The deployment (``streaming_app``) is written once against Ray Serve's API and runs under
``import modelplex as serve`` and ``from ray import serve``, side by side in one run, each
system in a driver process of its own (``bench.targets.Server``), started afresh per path.
A multiplexed model (a few ids, cheap to load) streams ``chunks`` server-sent events
(``data: <i>\\n\\n``), each after ``delay_ms`` of ``asyncio.sleep`` standing in for generating a
token. ``concurrency`` streams are kept open at once (``bench.stream_load``):

- **http**: the streaming deployment is the ingress; its ``__call__`` returns a Starlette
  ``StreamingResponse``. An aiohttp client in its own process reads the bodies as they arrive,
  the model id in the ``serve_multiplexed_model_id`` header.
- **handle**: an ingress deployment holds a handle to the streaming one, as an application
  would, and reads the streams with ``async for`` over
  ``handle.options(stream=True, multiplexed_model_id=...).tokens.remote()``. The driver calls
  its ``measure`` method once; the figures come back as its answer.

Prints one JSON line per system and path, a Markdown table with the targets (time to first
chunk at p50 and p99 <= 1/2 of Ray's), and a summary line with the modelplex/Ray ratios last.
The run is saved to ``bench/results/streaming-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, AsyncIterator

from .report import table, targets_and_notes
from .stream_load import LOAD_KEYS, run_stream_client, sse_chunk, stream_load
from .targets import ROOT, Server, SkipTarget, Target, ray_available

__all__ = ["compare", "streaming_app"]

PATHS = ("http", "handle")
SETTINGS = {
    "full": {"seconds": 15.0, "warmup": 5.0},
    "quick": {"seconds": 4.0, "warmup": 3.0},
}
COLUMNS = (("system", "label"), ("path", "path"), ("streams", "streams"),
           ("chunks/s", "chunks_per_s"), ("TTFB p50 ms", "ttfb_p50_ms"),
           ("TTFB p90 ms", "ttfb_p90_ms"), ("TTFB p99 ms", "ttfb_p99_ms"),
           ("TTFB max ms", "ttfb_max_ms"), ("stream p50 s", "stream_p50_s"),
           ("stream p99 s", "stream_p99_s"), ("errors", "errors"), ("startup s", "startup_s"))


def streaming_app(serve: Any, *, path: str, replicas: int, slots: int, max_ongoing: int,
                  chunks: int, delay_s: float, load_s: float) -> Any:
    """The benchmark's streaming deployment, bound: as the ingress (``path="http"``), or behind
    an ingress that measures streams through a handle (``path="handle"``)."""

    # Ray reserves 1 CPU per replica by default: 2 cores would not fit 2 streamers and the
    # ingress. modelplex's local processes reserve nothing and ignore this.
    @serve.deployment(num_replicas=replicas, max_ongoing_requests=max_ongoing,
                      ray_actor_options={"num_cpus": 0})
    class Streamer:
        def __init__(self, chunks: int, delay_s: float, load_s: float) -> None:
            self.chunks = chunks
            self.delay_s = delay_s
            self.load_s = load_s

        @serve.multiplexed(max_num_models_per_replica=slots)
        async def get_model(self, model_id: str) -> str:
            await asyncio.sleep(self.load_s)
            return model_id

        async def events(self, model: str) -> AsyncIterator[str]:
            for i in range(self.chunks):
                await asyncio.sleep(self.delay_s)  # a token's generation
                yield sse_chunk(i)

        async def tokens(self) -> AsyncIterator[str]:
            """The handle path's generator method."""
            model = await self.get_model(serve.get_multiplexed_model_id())
            async for event in self.events(model):
                yield event

        async def __call__(self, request: Any) -> Any:
            from starlette.responses import StreamingResponse

            model = await self.get_model(serve.get_multiplexed_model_id())
            return StreamingResponse(self.events(model), media_type="text/event-stream")

    streamer = Streamer.bind(chunks, delay_s, load_s)
    if path == "http":
        return streamer

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class StreamCaller:
        def __init__(self, streamer: Any) -> None:
            self.streamer = streamer

        async def measure(self, spec: dict) -> dict:
            streams = {model_id: self.streamer.options(stream=True, multiplexed_model_id=model_id)
                       for model_id in spec["model_ids"]}

            def open_stream(model_id: str) -> Any:
                return streams[model_id].tokens.remote()

            return await stream_load(open_stream, **{k: spec[k] for k in LOAD_KEYS})

    return StreamCaller.bind(streamer)


def modelplex_streams() -> str | None:
    """None if this checkout's modelplex takes ``handle.options(stream=True)``, else why not.

    Without it, a ``StreamingResponse`` would not be forwarded chunk by chunk either, and its
    time to first chunk would be the whole stream's."""
    code = "from modelplex.handle import DeploymentHandle as H; H('d', 'a').options(stream=True)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), check=False)
    if proc.returncode == 0:
        return None
    lines = proc.stderr.strip().splitlines()
    return "modelplex has no streaming yet: " + (lines[-1] if lines else f"exit {proc.returncode}")


def run_one(system: str, path: str, app_kwargs: dict, load: dict, workdir: str) -> dict:
    target = Target(system)
    log = os.path.join(workdir, "drivers.log")
    with Server(target, "streaming", {**app_kwargs, "path": path}, log) as server:
        if path == "http":
            figures = run_stream_client({"url": server.url, **load}, ROOT)
        else:
            figures = server.command({"cmd": "call", "method": "measure", "args": [load]})
    return {"system": system, "path": path, "label": target.label.replace(" lru", ""),
            **figures, **server.ready}


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def compare(rows: list[dict]) -> dict:
    """Per path both systems ran: modelplex/Ray ratios of TTFB p50, p99 and chunks/s, and the
    targets (TTFB p50 and p99 <= 1/2 of Ray's). Rows with errors meet no target."""
    out: dict[str, Any] = {}
    for path in PATHS:
        mine = next((r for r in rows if r["system"] == "modelplex" and r["path"] == path), None)
        ray = next((r for r in rows if r["system"] == "ray" and r["path"] == path), None)
        if mine is None or ray is None:
            continue
        p50 = _ratio(mine["ttfb_p50_ms"], ray["ttfb_p50_ms"])
        p99 = _ratio(mine["ttfb_p99_ms"], ray["ttfb_p99_ms"])
        clean = mine["errors"] == 0
        out[path] = {
            "ttfb_p50_ratio": p50,
            "ttfb_p99_ratio": p99,
            "chunks_per_s_ratio": _ratio(mine["chunks_per_s"], ray["chunks_per_s"]),
            "targets_met": {"ttfb_p50_half": clean and p50 is not None and p50 <= 0.5,
                            "ttfb_p99_half": clean and p99 is not None and p99 <= 0.5},
        }
    return out


def buffered(row: dict) -> bool:
    """Whether a row's streams came whole rather than chunk by chunk: the first chunk as late
    as the stream's end (a proxy or handle that buffers the body)."""
    return row["streams"] > 0 and row["ttfb_p50_ms"] >= 0.9 * row["stream_p50_s"] * 1000


def checks(ratios: dict) -> list[dict]:
    """``compare``'s targets as rows for ``bench.report.targets_and_notes``."""
    return [{"target": f"{path}: TTFB {q} <= 1/2 of Ray Serve's",
             "value": ratios[path][f"ttfb_{q}_ratio"], "met": ratios[path]["targets_met"][key]}
            for path in ratios for q, key in (("p50", "ttfb_p50_half"), ("p99", "ttfb_p99_half"))]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.streaming", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--quick", action="store_true", help="a shorter window: ~75 s for both systems")
    add("--systems", default="modelplex,ray", help="comma-separated: modelplex, ray")
    add("--paths", default=",".join(PATHS), help="comma-separated: http, handle")
    add("--concurrency", type=int, default=100, help="streams open at once")
    add("--chunks", type=int, default=200, help="chunks per stream")
    add("--delay-ms", type=float, default=5.0, help="sleep before each chunk")
    add("--models", type=int, default=4, help="model ids, all fitting in a replica's slots")
    add("--load-ms", type=float, default=50.0, help="a model's load (in the warm-up)")
    add("--replicas", type=int, default=2)
    add("--max-ongoing", type=int, default=100, help="max_ongoing_requests per replica")
    add("--seconds", type=float, help="measured seconds per run (default 15, --quick 4)")
    add("--warmup", type=float, help="unmeasured seconds first (default 5, --quick 3)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    base = SETTINGS["quick" if args.quick else "full"]
    app_kwargs = {"replicas": args.replicas, "slots": args.models,
                  "max_ongoing": args.max_ongoing, "chunks": args.chunks,
                  "delay_s": args.delay_ms / 1000, "load_s": args.load_ms / 1000}
    load = {"concurrency": args.concurrency, "chunks": args.chunks,
            "model_ids": [f"m{i}" for i in range(args.models)],
            "seconds": args.seconds or base["seconds"], "warmup": args.warmup or base["warmup"],
            # one nominal stream: the starts spread over it
            "stagger_s": args.chunks * args.delay_ms / 1000}
    results: dict[str, Any] = {"config": {**app_kwargs, **load}, "rows": [], "notes": []}
    print(json.dumps({"scenario": "streaming", "config": results["config"]}), flush=True)
    skipped: dict[str, str] = {}
    systems = args.systems.split(",")
    if "ray" in systems and (why := ray_available()) is not None:
        skipped["ray"] = why
    if "modelplex" in systems and (why := modelplex_streams()) is not None:
        skipped["modelplex"] = why
    for system, why in skipped.items():
        print(json.dumps({"system": system, "skipped": why}), flush=True)
        results["notes"].append(f"{system} skipped: {why}")
    workdir = tempfile.mkdtemp(prefix="bench-streaming-")
    t0 = time.monotonic()
    for path in args.paths.split(","):
        for system in (s for s in systems if s not in skipped):
            try:
                row = run_one(system, path, app_kwargs, load, workdir)
            except SkipTarget as exc:
                print(json.dumps({"system": system, "path": path, "skipped": str(exc)}),
                      flush=True)
                continue
            except RuntimeError as exc:  # the driver or the client failed: on to the others
                print(json.dumps({"system": system, "path": path, "failed": str(exc)[-500:]}),
                      flush=True)
                results["notes"].append(f"{system} via {path} failed (drivers' log: "
                                        f"{os.path.join(workdir, 'drivers.log')}): "
                                        f"{str(exc)[-200:]}")
                continue
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
            if buffered(row):
                results["notes"].append(f"{system} via {path}: the first chunk came as late as "
                                        "the stream's end: the body was not streamed")
    results["duration_s"] = round(time.monotonic() - t0, 1)
    results["ratios"] = compare(results["rows"])
    results_dir = os.path.join(ROOT, "bench", "results")
    os.makedirs(results_dir, exist_ok=True)
    saved = os.path.join(results_dir, f"streaming-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(saved, "w") as f:
        json.dump(results, f, indent=1)
    print("\n".join(["", table(results["rows"], COLUMNS), "",
                     *targets_and_notes(checks(results["ratios"]), results["notes"]),
                     f"- saved to {os.path.relpath(saved, ROOT)}", ""]))
    print(json.dumps({"summary": {
        **{f"{r['system']} {r['path']}": {k: r[k] for k in ("chunks_per_s", "ttfb_p50_ms",
                                                              "ttfb_p99_ms", "errors")}
           for r in results["rows"]},
        **results["ratios"]}}), flush=True)


if __name__ == "__main__":
    main()
