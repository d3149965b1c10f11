"""The S3 deployment of ``bench.storage``, written once against Ray Serve's API.

``loader="aioboto3"`` is the seed's loader (a fresh aioboto3 session downloads the object on
every load); ``loader="fetch"`` is modelplex's ``serve.fetch`` (a node-wide disk cache).
The download directory of the seed's code is a temp dir rather than the working directory,
so a run leaves no files behind. Loads and unloads go to the shared event log of ``bench.app``.
"""

from __future__ import annotations

import os
from typing import Any

from .app import EventLog, Model

__all__ = ["storage_app"]


def storage_app(serve: Any, *, loader: str, replicas: int, slots: int, max_ongoing: int,
                bucket: str, download_dir: str, events_dir: str) -> Any:
    if loader not in ("aioboto3", "fetch"):
        raise ValueError(f"loader must be 'aioboto3' or 'fetch', got {loader!r}")

    @serve.deployment(num_replicas=replicas, max_ongoing_requests=max_ongoing)
    class S3Models:
        def __init__(self, loader: str, bucket: str, download_dir: str, events_dir: str) -> None:
            import numpy

            self.np = numpy
            self.loader = loader
            self.bucket_name = bucket
            self.download_dir = download_dir
            self.log = EventLog(events_dir)

        async def download(self, model_id: str) -> str:
            if self.loader == "fetch":
                return await serve.fetch(f"s3://{self.bucket_name}/{model_id}/model.pt")
            import aioboto3  # the seed's code, as the guide writes it

            path = os.path.join(self.download_dir, f"model_{model_id}_{os.getpid()}.pt")
            session = aioboto3.Session()
            async with session.resource("s3") as s3:
                obj = await s3.Bucket(self.bucket_name)
                await obj.download_file(f"{model_id}/model.pt", path)
            return path

        @serve.multiplexed(max_num_models_per_replica=slots)
        async def get_model(self, model_id: str) -> Model:
            self.log("load_start", model_id)
            path = await self.download(model_id)
            weights = self.np.load(path)
            self.log("load_end", model_id)
            return Model(model_id, weights, self.log)

        async def __call__(self, request: Any) -> dict:
            model_id = serve.get_multiplexed_model_id()
            model = await self.get_model(model_id)
            return {"model": model_id, "pid": os.getpid(), "value": model.infer(),
                    "used_after_evict": model.unloaded}

    return S3Models.bind(loader, bucket, download_dir, events_dir)
