"""The torch deployments of ``bench.torch``, written once against Ray Serve's API.

``mlp_app(serve, ...)``: a multiplexed deployment of 10 MB torch MLPs; a miss ``torch.load``s
the model's state dict from disk, a request runs a real forward pass of a 16-row batch.
``adapter_app(serve, ...)``: ``examples/peft_lora.py``'s OpenAI server, built for ``serve``;
under Ray Serve, which has no ``serve.fetch``, the adapter folder is downloaded with fsspec
into a fresh temporary directory per load, as a Ray user would write it.

Each MLP replica appends a JSON line per load to ``loads-<pid>.jsonl`` in a shared directory,
with the replica's thread counts at that moment (``read_loads``).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from typing import Any

__all__ = ["FEATURES", "adapter_app", "download", "make_mlp", "mlp_app", "read_loads",
           "write_models"]

FEATURES = 1024
ROWS = 16  # the batch of one request


def make_mlp() -> Any:
    """1024 -> 1024 -> 1024 -> 512: 2.6 M float32 parameters, 10.5 MB."""
    from torch import nn

    return nn.Sequential(nn.Linear(FEATURES, FEATURES), nn.ReLU(),
                         nn.Linear(FEATURES, FEATURES), nn.ReLU(), nn.Linear(FEATURES, 512))


def model_path(model_dir: str, model_id: str) -> str:
    return os.path.join(model_dir, f"mlp-{model_id}.pt")


def write_models(model_dir: str, model_ids: list[str]) -> int:
    """Each id's state dict, seeded by its index; returns one file's size in bytes."""
    import torch

    size = 0
    for i, model_id in enumerate(model_ids):
        torch.manual_seed(i)
        torch.save(make_mlp().state_dict(), model_path(model_dir, model_id))
        size = os.path.getsize(model_path(model_dir, model_id))
    return size


def load_mlp(path: str) -> Any:
    """``torch.load`` (weights only) into a module built on the meta device: no time spent
    initialising weights that the state dict replaces."""
    import torch

    state = torch.load(path, weights_only=True)
    with torch.device("meta"):
        model = make_mlp()
    model.load_state_dict(state, assign=True)
    return model.eval()


def threads() -> dict:
    import torch

    return {"os_threads": len(os.listdir("/proc/self/task")),
            "torch_threads": torch.get_num_threads()}


def record_load(directory: str, model_id: str, load_s: float) -> None:
    line = {"t": time.time(), "model": model_id, "pid": os.getpid(),
            "load_ms": round(load_s * 1000, 2), **threads()}
    with open(os.path.join(directory, f"loads-{os.getpid()}.jsonl"), "a") as f:
        f.write(json.dumps(line) + "\n")


def read_loads(directory: str) -> list[dict]:
    """Every replica's load lines."""
    lines = []
    for name in sorted(os.listdir(directory)):
        if name.startswith("loads-") and name.endswith(".jsonl"):
            with open(os.path.join(directory, name)) as f:
                lines.extend(json.loads(line) for line in f if line.strip())
    return lines


def mlp_app(serve: Any, *, replicas: int, slots: int, max_ongoing: int, model_dir: str,
            loads_dir: str, num_cpus: float = 1, eviction_policy: str | None = None) -> Any:
    """The MLP deployment, bound. ``eviction_policy`` is modelplex-only."""
    multiplex_options: dict[str, Any] = {"max_num_models_per_replica": slots}
    if eviction_policy is not None:
        multiplex_options["eviction_policy"] = eviction_policy

    @serve.deployment(num_replicas=replicas, max_ongoing_requests=max_ongoing,
                      ray_actor_options={"num_cpus": num_cpus})
    class MLPs:
        def __init__(self) -> None:
            import torch

            self.torch = torch
            self.x = torch.randn(ROWS, FEATURES)

        @serve.multiplexed(**multiplex_options)
        async def get_model(self, model_id: str) -> Any:
            started = time.perf_counter()
            model = await asyncio.to_thread(load_mlp, model_path(model_dir, model_id))
            record_load(loads_dir, model_id, time.perf_counter() - started)
            return model

        async def __call__(self, request: Any) -> dict:
            model_id = serve.get_multiplexed_model_id()
            model = await self.get_model(model_id)
            with self.torch.inference_mode():
                out = model(self.x)
            return {"model": model_id, "pid": os.getpid(), "top": int(out[0].argmax())}

    return MLPs.bind()


async def download(uri: str) -> str:
    """What a Ray Serve loader does without ``serve.fetch``: the folder at ``uri``, copied
    into a new temporary directory (no cache across loads or replicas)."""
    import fsspec

    def get() -> str:
        fs, root = fsspec.core.url_to_fs(uri)
        local = tempfile.mkdtemp(prefix="adapter-")
        names = fs.ls(root.rstrip("/"), detail=False, refresh=True)
        if not names:
            raise FileNotFoundError(uri)
        for name in names:
            fs.get(name, os.path.join(local, name.rstrip("/").rsplit("/", 1)[-1]))
        return local

    return await asyncio.to_thread(get)


def adapter_app(serve: Any, *, system: str, store: str, replicas: int, adapters_per_replica: int,
                max_batch_size: int, num_cpus: float = 1) -> Any:
    """``examples/peft_lora.py``'s application for ``serve``."""
    from examples.peft_lora import build

    fetch = serve.fetch if system == "modelplex" else download
    return build(serve, fetch, store=store, replicas=replicas,
                 adapters_per_replica=adapters_per_replica, max_batch_size=max_batch_size,
                 adapter_options={"num_cpus": num_cpus}, ingress_options={"num_cpus": 0})
