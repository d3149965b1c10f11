"""A batched embedding model per model id: ``@serve.batch`` under ``@serve.multiplexed``.

Concurrent requests for one model id are embedded in one matrix product; a batch never mixes
model ids, so the batch function fetches one model, the one ``serve.get_multiplexed_model_id()``
names, and runs the whole batch on it. Each answer says which batch it was in and how big that
batch was, so a client can see the batching. Runs unchanged under ``from ray import serve``.

    modelplex run examples.batched_embeddings:app
    curl -H 'serve_multiplexed_model_id: en' -d 'hello world' http://127.0.0.1:8000/
"""

from __future__ import annotations

import asyncio
import itertools
import os
import zlib

import numpy as np

import modelplex as serve

DIM_IN, DIM_OUT = 256, 16


def featurize(texts: list[str]) -> np.ndarray:
    """Hashed character trigrams: one row of ``DIM_IN`` counts per text."""
    rows = np.zeros((len(texts), DIM_IN), dtype=np.float32)
    for row, text in enumerate(texts):
        padded = f"  {text} "
        for i in range(len(padded) - 2):
            rows[row, zlib.crc32(padded[i : i + 3].encode()) % DIM_IN] += 1.0
    return rows


class Embedder:
    """One model: a small projection matrix, seeded by the model id."""

    def __init__(self, model_id: str) -> None:
        rng = np.random.default_rng(zlib.crc32(model_id.encode()))
        self.weights = rng.standard_normal((DIM_IN, DIM_OUT)).astype(np.float32)

    def embed(self, texts: list[str]) -> np.ndarray:
        out = featurize(texts) @ self.weights
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


@serve.deployment(max_ongoing_requests=64)
class BatchedEmbeddings:
    def __init__(self) -> None:
        self.batch_ids = itertools.count()

    @serve.multiplexed(max_num_models_per_replica=4)
    async def get_model(self, model_id: str) -> Embedder:
        await asyncio.sleep(0.05)  # stands in for reading weights
        return Embedder(model_id)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def embed(self, texts: list[str]) -> list[dict]:
        model_id = serve.get_multiplexed_model_id()  # the batch's one model id
        model = await self.get_model(model_id)
        vectors = model.embed(texts)
        batch = f"{os.getpid()}-{next(self.batch_ids)}"
        return [
            {"model_id": model_id, "embedding": v.round(5).tolist(), "batch": batch,
             "batch_size": len(texts)}
            for v in vectors
        ]

    async def __call__(self, request) -> dict:
        text = (await request.body()).decode()
        return await self.embed(text)


app = BatchedEmbeddings.bind()
