"""The tenants benchmark's client: an open loop over several model ids, in its own process.

Each request is sent when it is due (``schedule``: seconds from the start, model id), whatever
is in flight, and its latency runs from when it was due, so a client that falls behind cannot
hide a slow server. One line per request comes back: (due s, model id, latency ms, status),
status 0 for no answer at all.

    python -m bench.tenant_load < spec.json   # {"url", "schedule", "timeout_s"}
"""

from __future__ import annotations

import time

from .client import HEADER, client_main
from .open_loop import send_when_due

__all__ = ["open_loop"]


async def open_loop(url: str, schedule: list[tuple[float, str]], timeout_s: float) -> dict:
    import aiohttp

    results: list[tuple[float, str, float, int]] = []
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=0)  # no client-side cap on requests in flight
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def one(due: float, model_id: str, start: float) -> None:
            status = 0
            try:
                async with session.get(url, headers={HEADER: model_id}) as response:
                    await response.read()
                    status = response.status
            except Exception:  # no answer at all: status 0
                pass
            latency_ms = (time.monotonic() - (start + due)) * 1000
            results.append((round(due, 4), model_id, round(latency_ms, 2), status))

        lag = await send_when_due(schedule, one, time.monotonic())
    return {"results": sorted(results), "client_lag_max_ms": round(lag * 1000, 2)}


if __name__ == "__main__":
    client_main(lambda spec: open_loop(spec["url"], [tuple(x) for x in spec["schedule"]],
                                       spec.get("timeout_s", 60.0)))
