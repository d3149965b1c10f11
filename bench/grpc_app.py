"""The gRPC benchmark's deployment, written once against Ray Serve's API, and its ``.proto``
compiled with grpcio-tools into a folder both systems import it from."""

from __future__ import annotations

import asyncio
import os
from typing import Any

PROTOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "protos")
MODULE = "bench_service_pb2"
SERVICER = "bench_service_pb2_grpc.add_BenchServicer_to_server"


def compile_proto(out: str) -> str:
    """Generate the service's modules into ``out``; returns ``out`` (for sys.path)."""
    from grpc_tools import protoc

    os.makedirs(out, exist_ok=True)
    code = protoc.main(["grpc_tools.protoc", f"-I{PROTOS}", f"--python_out={out}",
                        f"--grpc_python_out={out}", os.path.join(PROTOS, "bench_service.proto")])
    if code != 0:
        raise RuntimeError(f"protoc failed ({code})")
    return out


def grpc_app(serve: Any, *, replicas: int, slots: int, max_ongoing: int, load_s: float) -> Any:
    # Ray reserves 1 CPU per replica by default; modelplex's local processes ignore this.
    @serve.deployment(num_replicas=replicas, max_ongoing_requests=max_ongoing,
                      ray_actor_options={"num_cpus": 0})
    class Bench:
        def __init__(self, load_s: float) -> None:
            import importlib

            self.Pong = importlib.import_module(MODULE).Pong  # generated where the replica runs
            self.load_s = load_s
            self.pid = os.getpid()

        @serve.multiplexed(max_num_models_per_replica=slots)
        async def get_model(self, model_id: str) -> str:
            await asyncio.sleep(self.load_s)
            return model_id

        async def Noop(self, request: Any) -> Any:
            return self.Pong(pid=self.pid)

        async def Infer(self, request: Any) -> Any:
            model = await self.get_model(serve.get_multiplexed_model_id())
            return self.Pong(model=model, pid=self.pid)

    return Bench.bind(load_s)
