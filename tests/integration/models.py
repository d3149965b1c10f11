"""Deployments the integration tests share. Each records what happens to its models in an
events file (one line per load or __del__), so tests can check eviction from the outside."""

from __future__ import annotations

import asyncio
import os
import time

import modelplex as serve


def record(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def read_events(path: str) -> list[str]:
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []


class TrackedModel:
    def __init__(self, model_id: str, events: str) -> None:
        self.model_id = model_id
        self.events = events
        self.deleted = False

    def __del__(self) -> None:
        self.deleted = True
        record(self.events, f"del {self.model_id}")


def make_recorder(capacity: int = 2, *, sync_loader: bool = False):
    """A multiplexed deployment with the given cache capacity (built per test, pickled by value)."""

    @serve.deployment
    class Recorder:
        def __init__(self, events: str, load_s: float = 0.0, fail: tuple = ()) -> None:
            self.events = events
            self.load_s = load_s
            self.fail = fail

        if sync_loader:

            @serve.multiplexed(max_num_models_per_replica=capacity)
            def get_model(self, model_id: str) -> TrackedModel:
                record(self.events, f"load {model_id}")
                time.sleep(self.load_s)
                if model_id in self.fail:
                    raise RuntimeError(f"cannot load model {model_id}")
                return TrackedModel(model_id, self.events)

        else:

            @serve.multiplexed(max_num_models_per_replica=capacity)
            async def get_model(self, model_id: str) -> TrackedModel:
                record(self.events, f"load {model_id}")
                await asyncio.sleep(self.load_s)
                if model_id in self.fail:
                    raise RuntimeError(f"cannot load model {model_id}")
                return TrackedModel(model_id, self.events)

        async def __call__(self, request) -> dict:
            model_id = serve.get_multiplexed_model_id()
            model = await self.get_model(model_id)
            hold = float(request.query_params.get("hold", "0"))
            if hold:
                record(self.events, f"using {model_id}")
                await asyncio.sleep(hold)
            return {"model_id": model.model_id, "pid": os.getpid(), "alive": not model.deleted}

        async def infer(self, x: int) -> dict:
            model = await self.get_model(serve.get_multiplexed_model_id())
            return {"model_id": model.model_id, "x": x, "pid": os.getpid()}

        def pid(self) -> int:
            return os.getpid()

    return Recorder


def make_echo(capacity: int = 2, *, load_s: float = 0.0, name: str = "Echo", **options):
    """The integration tests' plain multiplexed deployment: each model is its own id, loaded
    in ``load_s``; ``__call__`` (HTTP, or a handle with no argument) and ``call`` answer the
    request's model id. ``options`` go to ``@serve.deployment``."""

    @serve.deployment(name=name, **options)
    class Echo:
        @serve.multiplexed(max_num_models_per_replica=capacity)
        async def get_model(self, model_id: str) -> str:
            if load_s:
                await asyncio.sleep(load_s)
            return model_id

        async def __call__(self, request=None) -> str:
            return await self.get_model(serve.get_multiplexed_model_id())

        async def call(self) -> str:
            return await self.get_model(serve.get_multiplexed_model_id())

    return Echo
