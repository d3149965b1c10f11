"""The autoscaling benchmark's deployment, written once against Ray Serve's API.

``bench.app``'s multiplexed deployment, emulated loads only, with either a fixed
``num_replicas`` or an ``autoscaling_config`` (the same dict for both systems), and two more
events in the shared log: ``request`` when a replica starts a request (its last one tells when
it stopped taking work) and ``replica_stop`` from the deployment's ``__del__``, which Ray Serve
calls when a replica shuts down.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from .app import EventLog, Model

__all__ = ["autoscale_app"]


def autoscale_app(serve: Any, *, slots: int, max_ongoing: int, load_s: float, infer_s: float,
                  events_dir: str, replicas: int | None = None,
                  autoscaling_config: dict | None = None) -> Any:
    if (replicas is None) == (autoscaling_config is None):
        raise ValueError("give exactly one of replicas and autoscaling_config")
    scaling: dict[str, Any] = (
        {"num_replicas": replicas} if autoscaling_config is None
        else {"autoscaling_config": dict(autoscaling_config)}
    )

    # Ray reserves 1 CPU per replica by default, so 2 cores would cap it at 2 replicas; the
    # replicas mostly sleep. Both systems reserve the quarter CPU (4 replicas fit on one).
    @serve.deployment(max_ongoing_requests=max_ongoing, ray_actor_options={"num_cpus": 0.25},
                      **scaling)
    class Autoscaled:
        def __init__(self, load_s: float, infer_s: float, events_dir: str) -> None:
            self.load_s = load_s
            self.infer_s = infer_s
            self.log = EventLog(events_dir)
            self.log("replica_start", "")

        @serve.multiplexed(max_num_models_per_replica=slots)
        async def get_model(self, model_id: str) -> Model:
            self.log("load_start", model_id)
            await asyncio.sleep(self.load_s)
            self.log("load_end", model_id)
            return Model(model_id, None, self.log)

        async def __call__(self, request: Any) -> dict:
            model_id = serve.get_multiplexed_model_id()
            self.log("request", model_id)
            model = await self.get_model(model_id)
            await asyncio.sleep(self.infer_s)  # the request keeps the model across this wait
            return {"model": model_id, "pid": os.getpid(), "used_after_evict": model.unloaded}

        def __del__(self) -> None:
            self.log("replica_stop", "")

    return Autoscaled.bind(load_s, infer_s, events_dir)
