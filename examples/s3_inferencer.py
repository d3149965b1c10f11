"""The seed's multiplexed ModelInferencer, as the Ray Serve guide writes it: each load downloads
``s3://my_bucket/<model_id>/model.pt`` with aioboto3 into the working directory.

Changed from the guide: the import (``import modelplex as serve``), and numpy in place of torch
(the weights are a ``numpy.save``'d array, so ``numpy.load`` reads them and the forward pass is a
matrix product). The endpoint and keys come from the environment, as boto3 reads them:
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``.
Serve with ``modelplex run examples.s3_inferencer:entry``.
"""

import modelplex as serve
import aioboto3
import numpy as np
import starlette


@serve.deployment
class ModelInferencer:
    def __init__(self):
        self.bucket_name = "my_bucket"

    @serve.multiplexed(max_num_models_per_replica=3)
    async def get_model(self, model_id: str):
        session = aioboto3.Session()
        async with session.resource("s3") as s3:
            obj = await s3.Bucket(self.bucket_name)
            await obj.download_file(f"{model_id}/model.pt", f"model_{model_id}.pt")
            return np.load(f"model_{model_id}.pt")

    async def __call__(self, request: starlette.requests.Request):
        model_id = serve.get_multiplexed_model_id()
        model = await self.get_model(model_id)
        return (np.ones((1, model.shape[0])) @ model).tolist()


entry = ModelInferencer.bind()
