"""``max_memory_bytes`` on real torch modules, on CPU: the default sizer counts parameters and
buffers (each shared tensor once), and the cache evicts by those bytes."""

from __future__ import annotations

import io
import logging

import pytest

from modelplex._errors import ModelTooLargeError
from modelplex._replica.cache import ModelCache
from modelplex._replica.eviction import default_model_size

torch = pytest.importorskip("torch")
nn = torch.nn
pytestmark = pytest.mark.torch


def test_parameters_and_buffers_are_counted_in_their_dtype():
    assert default_model_size(nn.Linear(10, 4)) == (10 * 4 + 4) * 4
    # BatchNorm: weight, bias (parameters); running mean and var (float32), the batch count
    # (one int64) are buffers.
    assert default_model_size(nn.BatchNorm1d(8)) == 8 * 4 * 4 + 8
    assert default_model_size(nn.Linear(10, 4).to(torch.bfloat16)) == (10 * 4 + 4) * 2
    assert default_model_size(nn.Linear(10, 4, bias=False).half()) == 10 * 4 * 2
    assert default_model_size(nn.ReLU()) == 0  # nothing held: known to be empty


def test_a_tied_weight_is_counted_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(100, 16)
            self.head = nn.Linear(16, 100, bias=False)
            self.head.weight = self.embed.weight

    assert default_model_size(Tied()) == 100 * 16 * 4


def test_a_loaded_module_and_a_plain_tensor_are_sized():
    """What ``torch.load`` gives back (a whole module), and a tensor as the model (``nbytes``)."""
    buf = io.BytesIO()
    torch.save(nn.Sequential(nn.Linear(32, 32), nn.LayerNorm(32)), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert default_model_size(loaded) == (32 * 32 + 32 + 32 + 32) * 4
    assert default_model_size(torch.zeros(5, 5, dtype=torch.float64)) == 200


def test_a_transformers_model_counts_its_weights():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=1, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(config)
    unique = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert default_model_size(model) == sum(unique.values()) + buffers > 0


async def test_the_cache_evicts_real_modules_by_their_bytes():
    """Two 4 KiB modules and a 16 KiB one under a 20 KiB budget: the big one displaces the
    least recently used small ones; one bigger than the budget is refused."""
    shapes = {"small-a": (32, 32), "small-b": (32, 32), "big": (64, 64), "huge": (128, 128)}

    async def load(model_id: str):
        rows, cols = shapes[model_id]
        return nn.Linear(rows, cols, bias=False)

    cache = ModelCache(load, max_models=-1, max_bytes=20 * 1024,
                       logger=logging.getLogger("test.modelplex.torch"))
    try:
        await cache.get("small-a")
        await cache.get("small-b")
        assert [m.size for m in cache.snapshot().loaded] == [4096, 4096]
        await cache.get("big")
        await cache.wait_for_unloads()
        assert cache.loaded_ids() == ("small-b", "big")
        with pytest.raises(ModelTooLargeError):
            await cache.get("huge")
        assert cache.loaded_ids() == ("small-b", "big")
    finally:
        await cache.close(timeout_s=0)
