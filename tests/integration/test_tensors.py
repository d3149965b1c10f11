"""Torch tensors returned by a multiplexed deployment of real modules, in real replica
processes: JSON over HTTP (whole and streamed), tensors through a handle (dtype kept)."""

from __future__ import annotations

import json

import pytest
import requests

import modelplex as serve

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


@serve.deployment(num_replicas=1)
class Classifier:
    """One small module per model id; the id seeds its weights."""

    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str):
        torch.manual_seed(int(model_id))
        return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=-1))

    async def logits(self, rows: int):
        model = await self.get_model(serve.get_multiplexed_model_id())
        return model.forward(torch.ones(rows, 4)).to(torch.bfloat16)

    async def steps(self, n: int):
        model = await self.get_model(serve.get_multiplexed_model_id())
        for i in range(n):
            yield {"step": torch.tensor(i), "top": model(torch.ones(1, 4)).argmax(-1)}

    async def __call__(self, request):
        model = await self.get_model(serve.get_multiplexed_model_id())
        if request.query_params.get("stream"):
            return self.steps(3)
        return {"probs": model.forward(torch.ones(2, 4)), "label": torch.tensor(1)}


def expected(model_id: str, rows: int) -> torch.Tensor:
    torch.manual_seed(int(model_id))
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=-1))
    return model(torch.ones(rows, 4)).detach()


def test_tensors_answer_json_over_http_whole_and_streamed(serve_instance):
    serve.run(Classifier.bind())
    url = serve_instance.url + "/"
    r = requests.get(url, headers={"serve_multiplexed_model_id": "7"}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] == 1
    assert torch.allclose(torch.tensor(body["probs"]), expected("7", 2), atol=1e-6)

    r = requests.get(url, params={"stream": 1}, headers={"serve_multiplexed_model_id": "7"},
                     timeout=60)
    assert r.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in r.text.splitlines()]
    top = int(expected("7", 1).argmax(-1))
    assert lines == [{"step": i, "top": [top]} for i in range(3)]


def test_tensors_arrive_as_tensors_through_a_handle(serve_instance):
    handle = serve.run(Classifier.bind())
    value = handle.options(multiplexed_model_id="3").logits.remote(5).result()
    assert isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16
    assert value.shape == (5, 3)
    assert torch.equal(value, expected("3", 5).to(torch.bfloat16))

    items = list(handle.options(multiplexed_model_id="3", stream=True).steps.remote(2))
    assert [int(item["step"]) for item in items] == [0, 1]
    assert all(isinstance(item["top"], torch.Tensor) for item in items)
