"""An open-loop load generator: each request is sent when it is due, whatever is in flight.

A closed loop sends less to a slow system; here the schedule is fixed (``times``, seconds from
the start), and a request's latency runs from when it was due, so a client that falls behind
cannot hide a slow server either. Runs in its own process, as ``bench.client`` does:

    python -m bench.open_loop < spec.json   # {"url", "times", "ids", "timeout_s", "until"}
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from .client import HEADER, client_main, percentile, run_client_module

__all__ = ["open_loop", "run_open_loop", "send_when_due"]


async def send_when_due(schedule, one, start: float) -> float:
    """Start ``one(due, model_id, start)`` for each (due, model id) when it is due, whatever is
    in flight; wait for them all and return how late the latest start was, in seconds."""
    lag = 0.0
    tasks = []
    for due, model_id in schedule:
        delay = start + due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        lag = max(lag, -delay)
        tasks.append(asyncio.create_task(one(due, model_id, start)))
    await asyncio.gather(*tasks)
    return lag


async def open_loop(url: str, times: list[float], ids: list[str], timeout_s: float,
                    until: float = 0.0) -> dict:
    """Send each request at its time; return once all are answered and ``until`` s have passed."""
    import aiohttp

    results: list[tuple[float, float, str | None]] = []  # due, latency, error
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=0)  # no client-side cap on requests in flight
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def one(due: float, model_id: str, start: float) -> None:
            error: str | None = None
            try:
                async with session.get(url, headers={HEADER: model_id}) as response:
                    body = await response.read()
                if response.status != 200:
                    error = f"{response.status} {body[:60].decode(errors='replace')}"
            except Exception as exc:  # no answer at all
                error = f"no answer: {type(exc).__name__}"
            results.append((due, time.monotonic() - (start + due), error))

        start = time.monotonic()
        wall_start = time.time()
        lag = await send_when_due(zip(times, ids), one, start)
        await asyncio.sleep(max(0.0, start + until - time.monotonic()))  # a trailing idle gap
        elapsed = time.monotonic() - start
    ms = sorted(r[1] * 1000 for r in results)
    errors = Counter(r[2] for r in results if r[2] is not None)
    return {
        "requests": len(results),
        "ok": len(results) - sum(errors.values()),
        "errors": sum(errors.values()),
        "error_causes": dict(errors),
        "started_at": wall_start,
        "elapsed_s": round(elapsed, 3),
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(ms[-1], 2) if ms else 0.0,
        "client_lag_max_ms": round(lag * 1000, 2),
        # (due s, latency ms) per request, for the per-phase figures
        "latencies": sorted((round(r[0], 3), round(r[1] * 1000, 2)) for r in results),
    }


def run_open_loop(spec: dict, cwd: str) -> dict:
    """Run the client in a new process and return its figures."""
    return run_client_module("bench.open_loop", spec, cwd)


if __name__ == "__main__":
    client_main(lambda spec: open_loop(spec["url"], spec["times"], spec["ids"],
                                       spec.get("timeout_s", 60.0), spec.get("until", 0.0)))
