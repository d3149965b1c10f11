"""The seed's multiplexed ModelInferencer, over model files in a local directory.

The directory is laid out like the seed's bucket: ``<root>/<model_id>/model.npy``. Weights are
numpy arrays, so the example needs nothing heavier than numpy. Make some with
``python examples/make_models.py models`` and serve with
``MODELPLEX_MODEL_ROOT=models modelplex run examples.inferencer:entry``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import starlette.requests

import modelplex as serve

MODEL_ROOT = os.environ.get("MODELPLEX_MODEL_ROOT", "models")


def model_path(root: Path, model_id: str) -> Path:
    """The file for ``model_id``, refusing ids that would leave ``root`` (``../``, ``/etc``)."""
    path = (root / model_id / "model.npy").resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"model id {model_id!r} points outside the model root")
    return path


class Model:
    """A linear model: one weight matrix. ``__del__`` releases it when modelplex evicts it."""

    def __init__(self, model_id: str, weights: np.ndarray) -> None:
        self.model_id = model_id
        self.weights = weights
        self.nbytes = weights.nbytes  # lets a byte-bounded cache size it

    def forward(self, x: np.ndarray) -> float:
        return float((x @ self.weights).sum())

    def __del__(self) -> None:
        self.weights = None


@serve.deployment
class ModelInferencer:
    def __init__(self, root: str = MODEL_ROOT) -> None:
        self.root = Path(root).resolve()

    @serve.multiplexed(max_num_models_per_replica=3)
    async def get_model(self, model_id: str) -> Model:
        path = model_path(self.root, model_id)
        if not path.is_file():
            raise FileNotFoundError(f"no model {model_id!r} under the model root")
        weights = await asyncio.to_thread(np.load, path)
        return Model(model_id, weights)

    async def __call__(self, request: starlette.requests.Request) -> dict:
        model_id = serve.get_multiplexed_model_id()
        model = await self.get_model(model_id)
        x = np.ones((1, model.weights.shape[0]), dtype=model.weights.dtype)
        return {"model_id": model_id, "output": model.forward(x), "pid": os.getpid()}


entry = ModelInferencer.bind()
