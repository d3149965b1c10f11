"""The seed's ModelInferencer with ``serve.fetch`` in place of the aioboto3 download: the object
lands in a disk cache shared by the node's replicas, so a model evicted from memory reloads from
disk, and replicas loading it at once download it once. Endpoint and keys: as s3_inferencer.py.
"""

import modelplex as serve
import numpy as np
import starlette


@serve.deployment
class ModelInferencer:
    def __init__(self):
        self.bucket_name = "my_bucket"

    @serve.multiplexed(max_num_models_per_replica=3)
    async def get_model(self, model_id: str):
        path = await serve.fetch(f"s3://{self.bucket_name}/{model_id}/model.pt")
        return np.load(path)

    async def __call__(self, request: starlette.requests.Request):
        model_id = serve.get_multiplexed_model_id()
        model = await self.get_model(model_id)
        return (np.ones((1, model.shape[0])) @ model).tolist()


entry = ModelInferencer.bind()
