"""A single hot model over two replicas: does it spread, and what does that buy?

Ray Serve keeps a model on the replicas that hold it until their queues fill; modelplex spreads
a model whose holders stay saturated to the next replica in its rendezvous order, once the
time requests spent waiting adds up to one load (rent-or-buy). This runs the same closed-loop
load three ways, side by side in one run, and prints throughput and the ratio to one replica:

    python -m bench.hot_model [--seconds 8] [--concurrency 16]

- one replica;
- two replicas, model limited to one of them (``max_replicas_per_model=1``: no spreading);
- two replicas, free to spread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import aiohttp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVER = r"""
import asyncio, json, os, sys, threading
import modelplex as serve

replicas, limit, infer_s, port = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])

@serve.deployment(num_replicas=replicas, max_ongoing_requests=2,
                  max_replicas_per_model=None if limit == "none" else int(limit))
class Hot:
    @serve.multiplexed(max_num_models_per_replica=4)
    async def get_model(self, model_id):
        await asyncio.sleep(0.2)
        return model_id

    async def __call__(self, request):
        await self.get_model(serve.get_multiplexed_model_id())
        await asyncio.sleep(infer_s)
        return os.getpid()

serve.start(http_options={"port": port})
serve.run(Hot.bind())
print("READY", flush=True)
sys.stdin.read()
serve.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _load(url: str, seconds: float, concurrency: int) -> dict:
    done = 0
    pids: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                async with session.get(url, headers={"serve_multiplexed_model_id": "hot"}) as r:
                    pid = int(await r.text())
                pids[pid] = pids.get(pid, 0) + 1
                done += 1

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - start
    return {"throughput": round(done / elapsed, 1), "requests_per_replica": sorted(pids.values())}


def run_case(replicas: int, limit: str, args: argparse.Namespace) -> dict:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(replicas), limit, str(args.infer_s), str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    try:
        for line in proc.stdout:
            if line.strip() == "READY":
                break
        else:
            raise RuntimeError("the server did not start")
        return asyncio.run(_load(f"http://127.0.0.1:{port}/", args.seconds, args.concurrency))
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--infer-s", type=float, default=0.01)
    args = parser.parse_args()
    one = run_case(1, "none", args)
    pinned = run_case(2, "1", args)
    spread = run_case(2, "none", args)
    result = {
        "scenario": "hot_model",
        "config": {"max_ongoing_requests": 2, "infer_s": args.infer_s, "concurrency": args.concurrency,
                   "seconds": args.seconds, "client": "aiohttp"},
        "one_replica": one,
        "two_replicas_max_replicas_per_model_1": pinned,
        "two_replicas_spread": spread,
        "spread_vs_one_replica": round(spread["throughput"] / one["throughput"], 2),
        "spread_vs_pinned": round(spread["throughput"] / pinned["throughput"], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
