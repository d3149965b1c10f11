"""Torch tensors as return values: JSON over HTTP (whole and streamed), as numpy arrays are."""

from __future__ import annotations

import asyncio
import json

import pytest

from modelplex._http.conversions import UnserializableResultError, json_default, render
from modelplex._replica.outbox import stream_http

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


def body(value) -> object:
    return json.loads(asyncio.run(render(value)).body)


def test_tensors_of_every_real_dtype_answer_nested_lists():
    ones = torch.ones(2, 2)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16,
                  torch.float8_e4m3fn, torch.float8_e5m2):
        assert body(ones.to(dtype)) == [[1.0, 1.0], [1.0, 1.0]], dtype
    for dtype in (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64,
                  torch.uint16, torch.uint32, torch.uint64):
        assert body(torch.tensor([0, 1, 2]).to(dtype)) == [0, 1, 2], dtype
    assert body(torch.tensor([True, False])) == [True, False]
    # bfloat16 keeps its own rounding: 1/3 is 0.333984375 in it, not float32's value.
    assert body(torch.tensor([1 / 3], dtype=torch.bfloat16)) == [0.333984375]


def test_a_zero_dim_tensor_is_a_scalar_and_shapes_survive():
    assert body(torch.tensor(2.5)) == 2.5
    assert body(torch.tensor(7)) == 7
    assert body(torch.zeros(2, 0, 3)) == [[], []]
    assert body({"logits": torch.tensor([0.5]), "label": torch.tensor(1),
                 "shape": torch.Size([2, 3])}) == {"logits": [0.5], "label": 1, "shape": [2, 3]}


def test_a_tensor_with_a_graph_is_detached():
    """The seed's ``model.forward(...)`` returns a tensor that requires grad."""
    layer = torch.nn.Linear(3, 2)
    out = layer(torch.ones(1, 3))
    assert out.requires_grad
    assert body(out)[0] == pytest.approx(out.detach()[0].tolist())


def test_quantized_and_sparse_tensors_are_read_as_their_values():
    sparse = torch.tensor([[0.0, 2.0], [3.0, 0.0]]).to_sparse()
    assert body(sparse) == [[0.0, 2.0], [3.0, 0.0]]
    with pytest.warns(UserWarning):  # torch deprecates quantized tensors; still accepted
        quantized = torch.quantize_per_tensor(torch.tensor([0.5, 1.0]), 0.5, 0, torch.qint8)
    assert body(quantized) == [0.5, 1.0]


def test_a_tensor_on_another_device_is_copied_to_the_cpu_first():
    """A CUDA tensor takes the path a GPU replica's does: ``.cpu()`` (the ``gpu`` tests run it
    on a real device); here a tensor subclass records the copy."""
    moved = []

    class OnDevice(torch.Tensor):
        def cpu(self, *args, **kwargs):
            moved.append(True)
            return torch.Tensor.cpu(self.as_subclass(torch.Tensor), *args, **kwargs)

    value = torch.tensor([1.5, 2.5]).as_subclass(OnDevice)
    assert json_default(value) == [1.5, 2.5] and moved == [True]


def test_tensors_without_a_json_form_fail_naming_the_dtype_or_device():
    with pytest.raises(UnserializableResultError, match="complex64.*view_as_real"):
        render_now(torch.ones(2, dtype=torch.complex64))
    with pytest.raises(UnserializableResultError, match="meta"):
        render_now(torch.ones(2, device="meta"))
    with pytest.raises(UnserializableResultError, match="Tensor.*Out of range|NaN"):
        render_now(torch.tensor([float("nan")]))


def render_now(value):
    return asyncio.run(render(value))


def test_streamed_tensors_are_json_lines():
    class Sink:
        def __init__(self):
            self.messages = []

        async def send(self, message):
            self.messages.append(message)

    async def tokens():
        yield torch.tensor([1, 2])
        yield {"token": torch.tensor(3)}

    sink = Sink()
    asyncio.run(stream_http(tokens(), sink))
    start, *bodies = sink.messages
    assert (b"content-type", b"application/x-ndjson") in start["headers"]
    assert b"".join(m["body"] for m in bodies) == b'[1,2]\n{"token":3}\n'
