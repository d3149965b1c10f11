"""The seed's multiplexed ModelInferencer, exactly as the Ray Serve guide writes it but for the
import (``import modelplex as serve``): each load downloads ``s3://my_bucket/<model_id>/model.pt``
with aioboto3 into the working directory, ``torch.load``s it and runs ``model.forward`` on a
random batch of 64 images; the tensor it returns answers as JSON.

The models are whole pickled modules (``make_model``). Since torch 2.6, ``torch.load``
unpickles only allow-listed classes unless told otherwise: for a bucket you trust, serve with
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (what the tests do), or allow-list the layers in the
replica as ``s3_fetch_inferencer.py`` does. The endpoint and keys come from the environment,
as boto3 reads them: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``. Needs ``pip install 'modelplex[examples,torch]'``; serve with
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 modelplex run examples.s3_inferencer:entry``.
"""

import modelplex as serve
import aioboto3
import torch
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
            return torch.load(f"model_{model_id}.pt")

    async def __call__(self, request: starlette.requests.Request):
        model_id = serve.get_multiplexed_model_id()
        model = await self.get_model(model_id)
        return model.forward(torch.rand(64, 3, 512, 512))


entry = ModelInferencer.bind()


def make_model(scale: float) -> torch.nn.Module:
    """An image classifier of 4 classes, for the bucket: the mean of each colour channel, times
    ``2 * scale / 3``. On ``torch.rand`` images (channel means of 0.5) every logit is
    ``scale``, to within 0.01."""
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(3, 4))
    with torch.no_grad():
        model[2].weight.fill_(2 * scale / 3)
        model[2].bias.zero_()
    return model
