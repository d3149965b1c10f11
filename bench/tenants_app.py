"""The tenants benchmark's deployment, written once against Ray Serve's API.

Every model id's loader is cheap and every id fits in a replica's cache, so what is measured
is queueing alone: each request holds its slot for ``infer_s`` times a factor drawn uniformly
from [0.5, 1.5] (real inference times vary; fixed ones would keep every slot in step). The
modelplex-only option (``fairness``) is passed to modelplex alone.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

__all__ = ["tenants_app"]


def tenants_app(serve: Any, *, replicas: int, max_ongoing: int, max_queued: int, models: int,
                infer_s: float, load_s: float, fairness: str | None = None) -> Any:
    modelplex_only = {"fairness": fairness} if fairness and hasattr(serve, "set_model_weights") else {}

    # Ray reserves 1 CPU per replica by default: 2 cores would not fit 2 replicas and the
    # proxy. modelplex's local processes reserve nothing and ignore this.
    @serve.deployment(num_replicas=replicas, max_ongoing_requests=max_ongoing,
                      max_queued_requests=max_queued, ray_actor_options={"num_cpus": 0},
                      **modelplex_only)
    class Tenants:
        def __init__(self, infer_s: float, load_s: float) -> None:
            self.infer_s = infer_s
            self.load_s = load_s
            self.rng = random.Random()

        @serve.multiplexed(max_num_models_per_replica=models)
        async def get_model(self, model_id: str) -> str:
            await asyncio.sleep(self.load_s)
            return model_id

        async def __call__(self, request: Any) -> str:
            model = await self.get_model(serve.get_multiplexed_model_id())
            await asyncio.sleep(self.infer_s * self.rng.uniform(0.5, 1.5))
            return model

    return Tenants.bind(infer_s, load_s)
