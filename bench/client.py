"""The load generator: a closed loop of ``concurrency`` workers, and its aiohttp client.

``closed_loop`` is transport-free: it calls ``send(model_id)`` and times it, so the HTTP client
here and the handle client in ``bench.driver`` measure the same way. Two ways to stop:

- a trace: one request per id, in order (``ids``), until all are answered;
- a duration: ``warmup`` seconds unrecorded, then ``seconds`` recorded (no-op overhead).

The HTTP client runs in its own process, so it never shares a CPU budget with the server's
event loop in a way that flatters either system:

    python -m bench.client < spec.json      # prints one JSON line of figures
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from typing import Awaitable, Callable, Sequence

__all__ = ["client_main", "closed_loop", "percentile", "run_client_module", "run_http_client",
           "summarize"]

HEADER = "serve_multiplexed_model_id"

# send(model_id) -> (error cause or None, response JSON or None)
Send = Callable[[str], Awaitable["tuple[str | None, dict | None]"]]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values; 0.0 for none."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(latencies_s: list[float], errors: Counter, elapsed_s: float,
              bodies: list[dict]) -> dict:
    """The figures of one run; ``errors`` maps a cause to how often it happened."""
    ms = sorted(x * 1000 for x in latencies_s)
    pids = Counter(str(b.get("pid")) for b in bodies if "pid" in b)
    batches = {b["batch"] for b in bodies if "batch" in b}  # bench.batching's answers
    return {
        "requests": len(ms),
        "ok": len(ms) - sum(errors.values()),
        "errors": sum(errors.values()),
        "error_causes": dict(errors),
        "elapsed_s": round(elapsed_s, 3),
        "throughput_rps": round(len(ms) / elapsed_s, 1) if elapsed_s > 0 else 0.0,
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(ms[-1], 2) if ms else 0.0,
        "uses_after_evict": sum(1 for b in bodies if b.get("used_after_evict")),
        "requests_per_replica": sorted(pids.values()),
        "mean_batch_size": round(sum("batch" in b for b in bodies) / len(batches), 2)
        if batches else None,
    }


async def closed_loop(
    send: Send,
    *,
    concurrency: int,
    ids: Sequence[str] | None = None,
    seconds: float = 0.0,
    warmup: float = 0.0,
    model_id: str = "",
) -> dict:
    """Run ``send`` from ``concurrency`` workers; a trace if ``ids``, else for a duration."""
    latencies: list[float] = []
    bodies: list[dict] = []
    errors: Counter = Counter()
    answered = [0]  # every request, warm-up included (what the server's CPU time covers)
    next_index = iter(range(len(ids))) if ids is not None else None
    start = time.monotonic()
    measure_from = start + warmup
    deadline = measure_from + seconds

    async def one(mid: str, recorded: Callable[[float, float], bool]) -> None:
        t0 = time.monotonic()
        try:
            cause, body = await send(mid)
        except Exception as exc:  # no answer at all
            cause, body = f"no answer: {type(exc).__name__}", None
        t1 = time.monotonic()
        answered[0] += 1
        if recorded(t0, t1):
            latencies.append(t1 - t0)
            if cause is not None:
                errors[cause] += 1
            if body is not None:
                bodies.append(body)

    async def trace_worker() -> None:
        assert next_index is not None and ids is not None
        for i in next_index:
            await one(ids[i], lambda t0, t1: True)

    async def timed_worker() -> None:
        while time.monotonic() < deadline:
            await one(model_id, lambda t0, t1: t0 >= measure_from and t1 <= deadline)

    worker = trace_worker if ids is not None else timed_worker
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - start if ids is not None else seconds
    return {**summarize(latencies, errors, elapsed, bodies), "answered": answered[0]}


async def _http(spec: dict) -> dict:
    import aiohttp

    url = spec["url"]
    timeout = aiohttp.ClientTimeout(total=spec.get("timeout_s", 300))
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def send(model_id: str) -> tuple[str | None, dict | None]:
            headers = {HEADER: model_id} if model_id else {}
            async with session.get(url, headers=headers) as response:
                body = await response.read()
            if response.status != 200:
                return f"{response.status} {body[:60].decode(errors='replace')}", None
            if body[:1] == b"{":
                return None, json.loads(body)
            return None, None

        return await closed_loop(
            send,
            concurrency=spec["concurrency"],
            ids=spec.get("ids"),
            seconds=spec.get("seconds", 0.0),
            warmup=spec.get("warmup", 0.0),
        )


def run_http_client(spec: dict, cwd: str) -> dict:
    """Run the aiohttp client in a new process and return its figures."""
    return run_client_module("bench.client", spec, cwd)


def run_client_module(module: str, spec: dict, cwd: str) -> dict:
    """Run a client ``module`` in a process of its own (the spec on stdin, its figures as the
    last line of stdout), so the client never shares a core's event loop with what it measures."""
    proc = subprocess.run(
        [sys.executable, "-m", module],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the client {module} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def client_main(run_spec: Callable[[dict], Awaitable[dict]]) -> None:
    """A client module's entry point, for ``run_client_module``: the spec from stdin, its
    figures as one JSON line on stdout."""
    spec = json.loads(sys.stdin.read())
    try:
        from uvloop import run  # a faster client loop: the client must not be the bottleneck
    except ImportError:  # pragma: no cover - uvloop comes with modelplex on POSIX
        run = asyncio.run
    line = (json.dumps(run(run_spec(spec))) + "\n").encode()
    # os.write until all of it is out: with PYTHONUNBUFFERED a print of a long line to a pipe
    # can write part of it and drop the rest.
    while line:
        line = line[os.write(sys.stdout.fileno(), line):]


if __name__ == "__main__":
    client_main(_http)
