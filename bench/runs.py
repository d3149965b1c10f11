"""One measured run each: a trace replayed against a target, or the no-op overhead.

Every run starts its system afresh in a driver process (so no cache survives from the run
before, and startup is measured each time), drives it from a client process, reads the
replicas' event log before shutting it down, and returns one flat dict of figures.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .app import weight_path
from .client import percentile, run_http_client
from .events import count, read_events
from .reference import belady, global_lru, static_top_k
from .targets import ROOT, Server, Target, cpu_seconds
from .trace import Trace

__all__ = ["Settings", "make_weights", "references", "run_overhead", "run_trace"]


@dataclass(frozen=True)
class Settings:
    replicas: int
    slots: int
    concurrency: int
    load_s: float
    infer_s: float
    overhead_warmup_s: float
    overhead_seconds: float
    workdir: str  # a temp dir for logs, event logs and weight files


def make_weights(directory: str, num_models: int, weight_mb: float) -> None:
    """One float32 array of ``weight_mb`` MB per model id, as ``np.save`` writes it."""
    n = max(1, int(weight_mb * 1024 * 1024 / 4))
    for i in range(num_models):
        np.save(weight_path(directory, str(i)), np.full(n, i, dtype=np.float32))


def references(ids: tuple[str, ...], capacity: int) -> dict:
    """Hit rates of one ideal cache of ``capacity`` models over the trace."""
    return {
        "global_lru": round(global_lru(ids, capacity), 4),
        "belady": round(belady(ids, capacity), 4),
        "static_top_k": round(static_top_k(ids, capacity), 4),
    }


def run_trace(target: Target, settings: Settings, trace: Trace, *, mode: str, max_ongoing: int,
              slots: int | None = None, weights_dir: str = "") -> dict:
    """Replay ``trace`` once, closed loop, and count what the caches did."""
    slots = settings.slots if slots is None else slots
    hottest = Counter(trace.model_ids).most_common(1)[0][0] if len(trace) else ""
    events_dir = tempfile.mkdtemp(prefix="events-", dir=settings.workdir)
    app_kwargs = dict(
        replicas=settings.replicas, slots=slots, max_ongoing=max_ongoing, mode=mode,
        load_s=settings.load_s, infer_s=settings.infer_s, weights_dir=weights_dir,
        events_dir=events_dir,
    )
    if target.policy is not None:
        app_kwargs["eviction_policy"] = target.policy  # a modelplex-only keyword
    log = os.path.join(settings.workdir, "drivers.log")
    with Server(target, "multiplexed", app_kwargs, log) as server:
        figures = run_http_client(
            {"url": server.url, "ids": list(trace.model_ids), "concurrency": settings.concurrency},
            ROOT,
        )
        time.sleep(0.2)  # the last unloads of the run, not the ones shutdown causes
        counts = count(read_events(events_dir, until=time.time()))
        ready = server.ready
    return {
        "kind": "trace",
        "system": target.system,
        "label": target.label,
        "backend": target.backend if target.system == "modelplex" else None,
        "policy": target.policy or "lru",
        "mode": mode,
        "max_ongoing": max_ongoing,
        "replicas": settings.replicas,
        "slots": slots,
        "concurrency": settings.concurrency,
        "trace": trace.digest(),
        **figures,
        "loads": counts.loads,
        "hit_rate": round(1 - counts.loads / len(trace), 4) if len(trace) else 0.0,
        "evictions": counts.evictions,
        "duplicate_loads": counts.duplicate_loads,
        "duplicate_loads_same_replica": counts.duplicate_loads_same_replica,
        # how often the most requested model was loaded: a hot model should load ~once
        "hottest_model_loads": counts.loads_by_model[hottest],
        "load_ms_p50": round(percentile(sorted(counts.load_ms), 50), 1),
        "load_ms_max": round(max(counts.load_ms, default=0.0), 1),
        **ready,
    }


def run_overhead(target: Target, settings: Settings, *, max_ongoing: int, via: tuple[str, ...]
                 ) -> list[dict]:
    """No-op requests for a fixed time after a warm-up: over HTTP and/or through a handle.

    ``server_cpu_us`` is the CPU time of the system's processes (the driver and all below it,
    the client not included) per request answered, warm-up included: on a shared machine it
    moves less than throughput does."""
    app_kwargs: dict = {"replicas": settings.replicas, "max_ongoing": max_ongoing}
    if not target.access_log:
        app_kwargs["access_log"] = False
    timing = {"concurrency": settings.concurrency, "seconds": settings.overhead_seconds,
              "warmup": settings.overhead_warmup_s}
    log = os.path.join(settings.workdir, "drivers.log")
    rows = []
    with Server(target, "noop", app_kwargs, log) as server:
        for how in via:
            cpu = cpu_seconds(server.pid)
            if how == "http":
                figures = run_http_client({"url": server.url, **timing}, ROOT)
            else:
                figures = server.command({"cmd": "handle", **timing})
            cpu = cpu_seconds(server.pid) - cpu
            answered = figures.get("answered") or 0
            figures["server_cpu_us"] = round(cpu / answered * 1e6, 1) if answered else None
            rows.append({
                "kind": "overhead", "system": target.system, "label": target.label,
                "backend": target.backend if target.system == "modelplex" else None,
                "via": how, "max_ongoing": max_ongoing,
                "replicas": 1 if target.system == "uvicorn" else settings.replicas,
                **figures, **server.ready,
            })
    return rows
