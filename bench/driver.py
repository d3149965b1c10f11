"""One system under test, in its own process: the driver that calls ``serve.run``.

    python -m bench.driver '{"system": "modelplex", "port": 8123, "app": "noop", ...}'

``system`` is ``modelplex`` (with ``backend`` "local" or "ray"), ``ray`` (Ray Serve) or
``uvicorn`` (a bare ASGI app: the floor). The driver prints ``BENCH READY <seconds> {json}``
once ``serve.run`` has returned (or ``BENCH SKIP <why>``), then reads JSON commands on stdin:
``{"cmd": "handle", ...}`` runs a closed loop of ``handle.remote()`` calls from this process
and prints ``BENCH RESULT {json}``; ``{"cmd": "call", "method": m, "args": [...]}`` calls the
ingress's method ``m`` once and prints its answer the same way; ``{"cmd": "stop"}`` or end of
input shuts down. ``grpc`` (``grpc_options``' fields) serves gRPC too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
from typing import Any

from .app import multiplexed_app, noop_app
from .autoscale_app import autoscale_app
from .storage_app import storage_app
from .client import closed_loop


def say(*parts: Any) -> None:
    print("BENCH", *parts, flush=True)


def build(serve: Any, config: dict) -> Any:
    if config["app"] == "noop":
        return noop_app(serve, **config["app_kwargs"])
    if config["app"] == "storage":
        return storage_app(serve, **config["app_kwargs"])
    if config["app"] == "autoscale":
        return autoscale_app(serve, **config["app_kwargs"])
    if config["app"] == "batched":
        from .batching import batched_app

        return batched_app(serve, **config["app_kwargs"])
    if config["app"] == "torch_mlp":
        from .torch_app import mlp_app

        return mlp_app(serve, **config["app_kwargs"])
    if config["app"] == "torch_adapters":
        from .torch_app import adapter_app

        return adapter_app(serve, **config["app_kwargs"])
    if config["app"] == "grpc":
        from .grpc_app import grpc_app

        return grpc_app(serve, **config["app_kwargs"])
    if config["app"] == "tenants":
        from .tenants_app import tenants_app

        return tenants_app(serve, **config["app_kwargs"])
    if config["app"] == "streaming":
        from .streaming import streaming_app

        return streaming_app(serve, **config["app_kwargs"])
    return multiplexed_app(serve, **config["app_kwargs"])


def handle_load(handle: Any, command: dict) -> dict:
    """A closed loop of ``handle.remote()`` calls from an asyncio loop on this thread."""

    async def send(model_id: str) -> tuple[str | None, dict | None]:
        result = await handle.remote()
        return None, result if isinstance(result, dict) else None

    return asyncio.run(
        closed_loop(send, concurrency=command["concurrency"], seconds=command["seconds"],
                    warmup=command["warmup"])
    )


def serve_commands(handle: Any) -> None:
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "stop":
            return
        if command["cmd"] == "handle":
            say("RESULT", json.dumps(handle_load(handle, command)))
        if command["cmd"] == "call":  # one call of an ingress method; its answer is the result
            method = getattr(handle, command["method"])
            say("RESULT", json.dumps(method.remote(*command.get("args", ())).result()))


def run_modelplex(config: dict) -> None:
    import modelplex as serve

    # The no-op floor runs with modelplex's own logging, as a user's script gets it: the
    # access lines go to the console (this process's stderr, a file here) and to proxy.log.
    # Elsewhere a handler of our own first keeps the INFO lines out (modelplex adds its
    # console handler only if none is set).
    if config["app"] != "noop":
        quiet = logging.StreamHandler(sys.stderr)
        quiet.setLevel(logging.WARNING)
        logging.getLogger("modelplex").addHandler(quiet)
    if config.get("controller_log"):  # the controller's decisions (scale, stop, preload), timed
        decisions = logging.FileHandler(config["controller_log"])
        decisions.setFormatter(logging.Formatter("%(created).3f %(message)s"))
        controller = logging.getLogger("modelplex.controller")
        controller.setLevel(logging.INFO)
        controller.addHandler(decisions)
    http = {"host": "127.0.0.1", "port": config["port"]}
    backend = config.get("backend", "local")
    grpc = {"grpc_options": config["grpc"]} if config.get("grpc") else {}
    t0 = time.perf_counter()
    try:
        if backend == "local":
            serve.start(http_options=http, **grpc)
        else:  # address="local": a new Ray cluster of our own, never one someone else started
            serve.start(http_options=http, cluster=backend, address="local", **grpc)
    except TypeError as exc:
        say("SKIP", f"serve.start(cluster={backend!r}) is not supported yet: {exc}")
        return
    t1 = time.perf_counter()
    try:
        handle = serve.run(build(serve, config))
        t2 = time.perf_counter()
        say("READY", round(t2 - t0, 3),
            json.dumps({"serve_start_s": round(t1 - t0, 3), "serve_run_s": round(t2 - t1, 3)}))
        serve_commands(handle)
    finally:
        serve.shutdown()


def run_ray(config: dict) -> None:
    import ray
    from ray import serve

    t0 = time.perf_counter()
    # address="local": always a new cluster of our own, never one someone else started.
    ray.init(address="local", include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, configure_logging=True)
    try:
        t1 = time.perf_counter()
        grpc = {"grpc_options": config["grpc"]} if config.get("grpc") else {}
        serve.start(http_options={"host": "127.0.0.1", "port": config["port"]}, **grpc)
        t2 = time.perf_counter()
        handle = serve.run(build(serve, config))
        t3 = time.perf_counter()
        timings = {"ray_init_s": t1 - t0, "serve_start_s": t2 - t1, "serve_run_s": t3 - t2,
                   "startup_with_init_s": t3 - t0}
        say("READY", round(t3 - t1, 3), json.dumps({k: round(v, 3) for k, v in timings.items()}))
        serve_commands(handle)
        serve.shutdown()
    finally:
        ray.shutdown()


async def floor_app(scope: dict, receive: Any, send: Any) -> None:
    """The least an ASGI server can do for the same request."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def run_uvicorn(config: dict) -> None:
    import uvicorn

    # The same server settings as modelplex's proxy (uvloop, httptools, no access log).
    server = uvicorn.Server(uvicorn.Config(
        floor_app, host="127.0.0.1", port=config["port"], loop="uvloop", http="httptools",
        lifespan="off", log_level="warning", access_log=False, server_header=False))
    t0 = time.perf_counter()

    def watch() -> None:
        while not server.started:
            time.sleep(0.005)
        say("READY", round(time.perf_counter() - t0, 3), "{}")
        for line in sys.stdin:
            if json.loads(line)["cmd"] == "stop":
                break
        server.should_exit = True

    threading.Thread(target=watch, daemon=True).start()
    server.run()


def main() -> None:
    config = json.loads(sys.argv[1])
    runner = {"modelplex": run_modelplex, "ray": run_ray, "uvicorn": run_uvicorn}[config["system"]]
    runner(config)


if __name__ == "__main__":
    main()
