"""The GPU paths on a real device (marker ``gpu``: skipped where torch sees no CUDA device).

A CUDA tensor answers JSON over HTTP (copied to the CPU first) and arrives as a CUDA tensor
through a handle; the peft adapter server's model runs on the device when there is one.
"""

from __future__ import annotations

import os
import sys

import pytest
import requests

import modelplex as serve

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.gpu]


@serve.deployment(ray_actor_options={"num_gpus": 1})
class OnDevice:
    @serve.multiplexed(max_num_models_per_replica=1)
    async def get_model(self, model_id: str):
        return torch.nn.Linear(4, 2, bias=False).cuda().half()

    async def logits(self):
        model = await self.get_model(serve.get_multiplexed_model_id())
        return model(torch.ones(3, 4, device="cuda", dtype=torch.half))

    async def __call__(self, request):
        return {"logits": await self.logits(), "device": str(torch.ones(1).cuda().device)}


def test_a_cuda_tensor_answers_json_and_arrives_as_a_tensor(serve_instance):
    handle = serve.run(OnDevice.bind())
    r = requests.get(serve_instance.url + "/", headers={"serve_multiplexed_model_id": "m"},
                     timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["device"].startswith("cuda") and len(body["logits"]) == 3
    value = handle.options(multiplexed_model_id="m").logits.remote().result()
    assert value.is_cuda and value.dtype == torch.half and value.shape == (3, 2)


def test_the_adapter_server_model_runs_on_the_device():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
    import peft_lora

    lm = peft_lora.LM()
    assert next(lm.model.parameters()).is_cuda
    decoding, tokens = lm.start(peft_lora.NO_ADAPTER, ["the quiet sea"])
    assert len(tokens) == 1 and len(lm.step(decoding)) == 1
