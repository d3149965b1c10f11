"""The deployments under test, written once against Ray Serve's API.

``multiplexed_app(serve, ...)`` and ``noop_app(serve, ...)`` take the ``serve`` module as an
argument, so the very same class body runs under ``import modelplex as serve`` and under
``from ray import serve``. The classes are defined inside the functions, so both systems ship
them by value (cloudpickle) and the replicas need nothing but ``bench`` on their path.

Each replica appends what its models do to ``events-<pid>.jsonl`` in a shared directory:
``{"t", "event": "load_start" | "load_end" | "unload", "model", "pid"}``; ``bench.events``
turns that log into loads, evictions and duplicate loads.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any, Callable

__all__ = ["EventLog", "Model", "multiplexed_app", "noop_app", "weight_path"]


def weight_path(weights_dir: str, model_id: str) -> str:
    return os.path.join(weights_dir, f"model-{model_id}.npy")


class EventLog:
    """One JSON line per event; a single ``os.write`` on an O_APPEND fd, so threads don't mix.

    Opened lazily: the object is built in the replica, where ``os.getpid()`` names the file.
    """

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._fd: int | None = None

    def __call__(self, event: str, model_id: str) -> None:
        if self._fd is None:
            path = os.path.join(self._directory, f"events-{os.getpid()}.jsonl")
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        line = {"t": time.time(), "event": event, "model": model_id, "pid": os.getpid()}
        os.write(self._fd, (json.dumps(line) + "\n").encode())


class Model:
    """A loaded model that notices being unloaded while a request still uses it.

    ``__del__`` may run twice (Ray Serve calls it on eviction, and the garbage collector calls
    the class's ``__del__`` again later), so it logs the unload once.
    """

    def __init__(self, model_id: str, weights: Any, log: Callable[[str, str], None]) -> None:
        self.model_id = model_id
        self.weights = weights
        self.unloaded = False
        self._log = log

    def infer(self) -> float:
        if self.weights is None:
            return 0.0
        return float(self.weights[:4096].sum())  # a small op that touches the weights

    def __del__(self) -> None:
        if self.unloaded:
            return
        self.unloaded = True
        self._log("unload", self.model_id)


def multiplexed_app(
    serve: Any,
    *,
    replicas: int,
    slots: int,
    max_ongoing: int,
    mode: str,
    load_s: float,
    infer_s: float,
    weights_dir: str,
    events_dir: str,
    eviction_policy: str | None = None,
) -> Any:
    """The benchmark's multiplexed deployment, bound. ``eviction_policy`` is modelplex-only."""
    multiplex_options: dict[str, Any] = {"max_num_models_per_replica": slots}
    if eviction_policy is not None:
        multiplex_options["eviction_policy"] = eviction_policy

    @serve.deployment(num_replicas=replicas, max_ongoing_requests=max_ongoing)
    class Multiplexed:
        def __init__(self, mode: str, load_s: float, infer_s: float, weights_dir: str,
                     events_dir: str) -> None:
            self.mode = mode
            if mode == "real":  # in the constructor, as a real model server would; emulated
                import numpy  # runs never import it, so their startup is the framework's alone

                self.np = numpy
            self.load_s = load_s
            self.infer_s = infer_s
            self.weights_dir = weights_dir
            self.log = EventLog(events_dir)

        @serve.multiplexed(**multiplex_options)
        async def get_model(self, model_id: str) -> Model:
            self.log("load_start", model_id)
            if self.mode == "real":
                path = weight_path(self.weights_dir, model_id)
                weights = await asyncio.to_thread(self.np.load, path)
            else:
                await asyncio.sleep(self.load_s)
                weights = None
            self.log("load_end", model_id)
            return Model(model_id, weights, self.log)

        async def __call__(self, request: Any) -> dict:
            model_id = serve.get_multiplexed_model_id()
            model = await self.get_model(model_id)
            value = model.infer()
            await asyncio.sleep(self.infer_s)  # the request keeps the model across this wait
            return {"model": model_id, "pid": os.getpid(), "value": value,
                    "used_after_evict": model.unloaded}

    return Multiplexed.bind(mode, load_s, infer_s, weights_dir, events_dir)


def noop_app(serve: Any, *, replicas: int, max_ongoing: int, access_log: bool = True) -> Any:
    """A deployment that does nothing: what is left is the framework's own cost.
    ``access_log=False`` turns its access lines off (Ray's ``logging_config`` key)."""
    logging_config = {} if access_log else {"logging_config": {"enable_access_log": False}}

    @serve.deployment(num_replicas=replicas, max_ongoing_requests=max_ongoing, **logging_config)
    class Noop:
        async def __call__(self, request: Any = None) -> str:
            return "ok"

    return Noop.bind()
