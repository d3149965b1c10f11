"""A bounded soak: keep serving through replica kills, and stay flat under overload.

    python -m bench.soak [--seconds 60] [--kill-every 10] [--overload-seconds 30]

Phase 1 (kills): 2 replicas serve a Zipf trace at concurrency 16 while a random replica is
SIGKILLed every ``--kill-every`` seconds. Reports requests sent, succeeded and failed (by
cause), failures other than requests in flight on a killed replica (target 0), the longest
request, time to recovery after each kill, and RSS of the proxy and replicas at start and end.

Phase 2 (overload): measures the sustainable rate, then offers 10x that rate open-loop with
``max_queued_requests`` set; every request must get an answer (200 or 503 with Retry-After)
and the proxy's RSS must stay flat.

The client runs in its own process (aiohttp); this process is the driver (proxy, controller).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import signal
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import modelplex as serve  # noqa: E402
from bench.trace import make_trace  # noqa: E402

H = "serve_multiplexed_model_id"


@serve.deployment(num_replicas=2, max_ongoing_requests=5)
class SoakModel:
    @serve.multiplexed(max_num_models_per_replica=4)
    async def get_model(self, model_id: str) -> str:
        await asyncio.sleep(0.05)
        return model_id

    async def __call__(self, request) -> str:
        model = await self.get_model(serve.get_multiplexed_model_id())
        await asyncio.sleep(float(request.query_params.get("infer", "0.002")))
        return model


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except FileNotFoundError:
        pass
    return 0.0


def replica_pids() -> list[int]:
    me = str(os.getpid())
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().split(")")[-1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z" and b"modelplex._replica" in cmd:
            pids.append(int(entry))
    return sorted(pids)


# ---- the client (its own process) ---------------------------------------------------------


def _client(url: str, ids: list[str], seconds: float, concurrency: int, rate: float, out) -> None:
    import aiohttp

    async def main() -> dict:
        stats = {"sent": 0, "ok": 0, "failed": {}, "max_latency_s": 0.0, "no_answer": 0}
        deadline = time.monotonic() + seconds
        timeout = aiohttp.ClientTimeout(total=60)
        conn = aiohttp.TCPConnector(limit=1000)
        async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:

            async def one(i: int) -> None:
                stats["sent"] += 1
                start = time.monotonic()
                try:
                    async with session.get(url, headers={H: ids[i % len(ids)]}) as r:
                        text = await r.text()
                        if r.status == 200:
                            stats["ok"] += 1
                        else:
                            cause = f"{r.status} {text.split(':')[0][:60]}"
                            if r.status == 503 and "died" in text:
                                cause = "503 replica died (in flight on a killed replica)"
                            if r.status == 503 and "retry-after" not in r.headers:
                                cause += " WITHOUT Retry-After"
                            stats["failed"][cause] = stats["failed"].get(cause, 0) + 1
                except Exception as exc:  # no answer at all
                    stats["no_answer"] += 1
                    cause = f"no answer: {type(exc).__name__}"
                    stats["failed"][cause] = stats["failed"].get(cause, 0) + 1
                stats["max_latency_s"] = max(stats["max_latency_s"], time.monotonic() - start)

            if rate <= 0:  # closed loop
                counter = iter(range(10**9))

                async def worker() -> None:
                    while time.monotonic() < deadline:
                        await one(next(counter))

                await asyncio.gather(*(worker() for _ in range(concurrency)))
            else:  # open loop at a fixed rate
                tasks = []
                start, i = time.monotonic(), 0
                while time.monotonic() < deadline:
                    target = start + i / rate
                    now = time.monotonic()
                    if target > now:
                        await asyncio.sleep(target - now)
                    tasks.append(asyncio.ensure_future(one(i)))
                    i += 1
                await asyncio.gather(*tasks)
            stats["elapsed_s"] = round(time.monotonic() - (deadline - seconds), 2)
        return stats

    out.put(asyncio.run(main()))


def run_client(url, ids, seconds, concurrency=16, rate=0.0):
    queue: mp.Queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(
        target=_client, args=(url, ids, seconds, concurrency, rate, queue)
    )
    proc.start()
    return proc, queue


# ---- the phases ----------------------------------------------------------------------------


def kills(args, url: str, ids: list[str]) -> dict:
    from modelplex._messages import DeploymentID
    from modelplex._driver.runtime import current_runtime

    controller = current_runtime().controller
    dep = DeploymentID("default", "SoakModel")
    start_rss = {"proxy": rss_mb(os.getpid()), "replicas": [rss_mb(p) for p in replica_pids()]}
    proc, queue = run_client(url, ids, args.seconds)
    rng = random.Random(0)
    recoveries = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < args.seconds - args.kill_every / 2:
        time.sleep(args.kill_every)
        pids = replica_pids()
        if not pids:
            continue
        victim = rng.choice(pids)
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while len(controller.replica_set(dep).replicas) >= 2 and time.monotonic() - killed < 5:
            time.sleep(0.005)  # until the controller notices
        while len(controller.replica_set(dep).replicas) < 2 and time.monotonic() - killed < 30:
            time.sleep(0.005)
        recoveries.append(round(time.monotonic() - killed, 3))
    stats = queue.get()
    proc.join()
    died = stats["failed"].get("503 replica died (in flight on a killed replica)", 0)
    return {
        "phase": "kills",
        "seconds": args.seconds,
        "kills": len(recoveries),
        **stats,
        "failed_other_than_in_flight_on_killed": sum(stats["failed"].values()) - died,
        "recovery_s": recoveries,
        "rss_mb_start": start_rss,
        "rss_mb_end": {"proxy": rss_mb(os.getpid()), "replicas": [rss_mb(p) for p in replica_pids()]},
    }


def overload(args, url: str, ids: list[str]) -> dict:
    proc, queue = run_client(url + "?infer=0.05", ids, 5.0)
    base = queue.get()
    proc.join()
    sustainable = base["ok"] / base["elapsed_s"]
    rate = 10 * sustainable
    samples = []
    proc, queue = run_client(url + "?infer=0.05", ids, args.overload_seconds, rate=rate)
    while proc.is_alive() and queue.empty():
        samples.append(rss_mb(os.getpid()))
        time.sleep(1.0)
    stats = queue.get()
    proc.join()
    return {
        "phase": "overload",
        "sustainable_rps": round(sustainable, 1),
        "offered_rps": round(rate, 1),
        **stats,
        "proxy_rss_mb": {"start": samples[0] if samples else None, "max": max(samples, default=None),
                         "end": samples[-1] if samples else None,
                         "every_5s": samples[::5]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--kill-every", type=float, default=10.0)
    parser.add_argument("--overload-seconds", type=float, default=30.0)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ids = list(make_trace().model_ids)
    url = f"http://127.0.0.1:{port}/"
    import logging

    logging.getLogger("modelplex").setLevel(logging.WARNING)
    serve.start(http_options={"port": port})
    try:
        serve.run(SoakModel.bind())
        print(json.dumps(kills(args, url, ids)), flush=True)
        if args.overload_seconds > 0:
            serve.run(SoakModel.options(max_queued_requests=100).bind())
            print(json.dumps(overload(args, url, ids)), flush=True)
    finally:
        serve.shutdown()


if __name__ == "__main__":
    main()
