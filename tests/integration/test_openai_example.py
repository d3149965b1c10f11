"""examples/openai_lora.py through the official ``openai`` client: completions and chat, whole
and streamed, the adapter list, errors; and each adapter's requests stay on the replica that
holds it."""

from __future__ import annotations

import os
import sys
import time

import httpx
import pytest
from openai import NotFoundError, OpenAI, UnprocessableEntityError

import modelplex as serve

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "examples"))

from openai_lora import app  # noqa: E402


@pytest.fixture(scope="module")
def client():
    from ..conftest import start_on_a_free_port

    instance = start_on_a_free_port()
    serve.run(app)
    yield OpenAI(base_url=f"{instance.url}/v1", api_key="unused", max_retries=0)
    serve.shutdown()


def test_completions_whole_and_streamed_say_the_same(client):
    whole = client.completions.create(model="lora-poet", prompt="the quiet sea", max_tokens=12)
    assert whole.object == "text_completion" and whole.model == "lora-poet"
    text = whole.choices[0].text
    assert len(text.split()) == 12 and whole.usage.completion_tokens == 12
    again = client.completions.create(model="lora-poet", prompt="the quiet sea", max_tokens=12)
    assert again.choices[0].text == text  # same adapter, same prompt, same words
    other = client.completions.create(model="lora-pirate", prompt="the quiet sea", max_tokens=12)
    assert other.choices[0].text != text  # another adapter answers differently

    pieces = []
    for chunk in client.completions.create(model="lora-poet", prompt="the quiet sea",
                                           max_tokens=12, stream=True):
        assert chunk.object == "text_completion"
        pieces.append(chunk.choices[0].text)
    assert "".join(pieces) == text


def test_chat_streams_deltas_token_by_token(client):
    messages = [{"role": "user", "content": "tell me of the harbor"}]
    whole = client.chat.completions.create(model="lora-pirate", messages=messages, max_tokens=20)
    assert whole.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(
        model="lora-pirate", messages=messages, max_tokens=20, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == whole.choices[0].message.content
    assert len(chunks) == 21  # one chunk per token, then the finish


def test_the_first_token_arrives_before_the_last_is_made(client):
    """Streaming, not buffering: 200 tokens take 0.4 s or more to make; the first arrives at
    once (measured loosely: the point is that it is not at the end)."""
    started = time.perf_counter()
    stream = client.completions.create(model="lora-poet", prompt="a", max_tokens=200, stream=True)
    next(iter(stream))
    first = time.perf_counter() - started
    rest = sum(1 for _ in stream)
    total = time.perf_counter() - started
    assert rest == 200  # 199 tokens left, the finish chunk
    assert first < total / 2


def test_models_lists_the_loaded_adapters(client):
    client.completions.create(model="lora-listed", prompt="x", max_tokens=1)
    ids = [m.id for m in client.models.list()]
    assert "lora-listed" in ids and "lora-poet" in ids
    assert all(i.startswith("lora-") for i in ids)


def test_an_unknown_adapter_is_a_404_and_a_bad_body_a_422(client):
    with pytest.raises(NotFoundError) as err:
        client.completions.create(model="gpt-9", prompt="x")
    assert "no adapter 'gpt-9'" in str(err.value)
    with pytest.raises(UnprocessableEntityError):
        client.completions.create(model="lora-poet", prompt="x", max_tokens=0)
    with pytest.raises(UnprocessableEntityError):
        client.chat.completions.create(model="lora-poet", messages=[])


def test_each_adapter_stays_on_one_replica(client):
    """The ingress passes ``model`` on as the multiplexed model id: with two replicas, each
    adapter loads once, on one of them, however many requests ask for it."""
    for _ in range(3):
        for name in ("lora-a1", "lora-a2", "lora-a3"):
            client.completions.create(model=name, prompt="x", max_tokens=1)
    loaded = serve.list_models("default", "Adapters")
    for name in ("lora-a1", "lora-a2", "lora-a3"):
        assert len([m for m in loaded if m.model_id == name]) == 1, loaded


def test_a_client_that_leaves_a_stream_frees_its_slot(client):
    base = str(client.base_url).rstrip("/")
    body = {"model": "lora-poet", "prompt": "x", "max_tokens": 500, "stream": True}
    for _ in range(5):
        with httpx.stream("POST", f"{base}/completions", json=body, timeout=30) as r:
            next(r.iter_lines())
    answer = client.completions.create(model="lora-poet", prompt="x", max_tokens=2)
    assert answer.usage.completion_tokens == 2
