"""The seed's ModelInferencer with ``serve.fetch`` in place of the aioboto3 download: the object
lands in a disk cache shared by the node's replicas, so a model evicted from memory reloads from
disk, and replicas loading it at once download it once. Endpoint, keys and models: as
s3_inferencer.py.

``torch.load`` keeps its safe default (``weights_only``): the replica allow-lists the layers the
models are made of. That happens in ``__init__``, in the replica's process: the class travels
there pickled by value, without this module's top-level code.
"""

import modelplex as serve
import torch
import starlette

LAYERS = [torch.nn.Sequential, torch.nn.AdaptiveAvgPool2d, torch.nn.Flatten, torch.nn.Linear]


@serve.deployment
class ModelInferencer:
    def __init__(self):
        self.bucket_name = "my_bucket"
        torch.serialization.add_safe_globals(LAYERS)

    @serve.multiplexed(max_num_models_per_replica=3)
    async def get_model(self, model_id: str):
        path = await serve.fetch(f"s3://{self.bucket_name}/{model_id}/model.pt")
        return torch.load(path)

    async def __call__(self, request: starlette.requests.Request):
        model_id = serve.get_multiplexed_model_id()
        model = await self.get_model(model_id)
        return model.forward(torch.rand(64, 3, 512, 512))


entry = ModelInferencer.bind()
