"""The request path with real processes and sockets: queue bounds and reconnects."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os

import requests

import modelplex as serve
from modelplex._messages import DeploymentID
from modelplex._driver.runtime import current_runtime

from ..conftest import wait_until


@serve.deployment(max_ongoing_requests=2, max_queued_requests=10)
class Sleepy:
    async def __call__(self, request):
        return await self.nap(float(request.query_params.get("s", "0")))

    async def nap(self, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return os.getpid()


def test_max_queued_requests_holds_for_the_first_burst(serve_instance):
    """60 calls reach a router before it has heard from the controller, so before it knows
    the bound: 2 may run and 10 wait; the other 48 are refused at once."""
    handle = serve.run(Sleepy.bind())

    async def outcome(response):
        try:
            await response
            return "ok"
        except serve.BackPressureError:
            return "refused"

    async def burst() -> list[str]:
        # Made in one loop turn: all 60 are in the router before its first replica set.
        responses = [handle.nap.remote(0.3) for _ in range(60)]
        return await asyncio.gather(*(outcome(r) for r in responses))

    outcomes = current_runtime().call(burst(), timeout=60)
    assert (outcomes.count("refused"), outcomes.count("ok")) == (48, 12)


def test_max_queued_requests_holds_over_http(serve_instance):
    serve.run(Sleepy.bind())
    with concurrent.futures.ThreadPoolExecutor(60) as pool:
        answers = list(pool.map(
            # 1 s each: all 60 arrive while the first 12 still hold the slots and the queue,
            # however slowly a loaded machine starts the threads.
            lambda _: requests.get(serve_instance.url, params={"s": "1.0"}, timeout=60),
            range(60),
        ))
    statuses = [r.status_code for r in answers]
    assert statuses.count(503) == 48 and statuses.count(200) == 12, sorted(statuses)
    assert all(r.headers.get("retry-after") for r in answers if r.status_code == 503)


def test_a_lost_connection_to_a_healthy_replica_is_redialled(serve_instance):
    serve.run(Sleepy.bind())
    assert requests.get(serve_instance.url).status_code == 200
    runtime = current_runtime()
    router = runtime.registry.router(DeploymentID("default", "Sleepy"))

    async def break_connections() -> int:
        live = list(router._pool._live.values())
        for running in live:
            running.channel.close()  # as a network blip would, from this side
        return len(live)

    assert runtime.call(break_connections()) == 1
    # The replica process is fine and still listed: the router dials it again.
    wait_until(lambda: requests.get(serve_instance.url).status_code == 200, timeout=10)
    assert runtime.call(router.wait_ready(timeout_s=5)) == list(router.replica_addresses())
