"""examples/peft_lora.py with the official ``openai`` client: a transformers base per replica,
peft LoRA adapters fetched as safetensors from a real S3 server (moto), loaded and deleted on
the base as the cache turns over, batched by adapter, streamed token by token.

Every answer is checked against the same adapter decoding the same prompt alone, in this
process: an answer made by another adapter (a batch that mixed them, a request routed to a
replica where its adapter was not the active one) would differ.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from openai import NotFoundError, OpenAI, UnprocessableEntityError  # noqa: E402

import modelplex as serve  # noqa: E402

from ..conftest import start_on_a_free_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import peft_lora  # noqa: E402

pytestmark = pytest.mark.torch

ADAPTERS = [f"lora-{i:02d}" for i in range(20)]
PROMPTS = ["the quiet sea", "a ship of gold", "night", "winter river stone far", "echo"]
STORE = "s3://adapters"


class Reference:
    """The adapters decoded alone, in this process, from the files the store holds."""

    def __init__(self) -> None:
        self.lm = peft_lora.LM()
        self.directory = tempfile.mkdtemp()
        self.answers: dict[tuple[str, str, int], str] = {}
        self.keys: dict[str, str] = {}  # adapter name -> its key on the base

    def __call__(self, adapter: str, prompt: str, max_tokens: int) -> str:
        key = (adapter, prompt, max_tokens)
        if key not in self.answers:
            if adapter not in self.keys:
                folder = os.path.join(self.directory, adapter)
                os.makedirs(folder, exist_ok=True)
                for name, data in peft_lora.adapter_files(adapter).items():
                    with open(os.path.join(folder, name), "wb") as f:
                        f.write(data)
                self.keys[adapter] = self.lm.load(adapter, folder)
            decoding, tokens = self.lm.start(self.keys[adapter], [prompt])
            words = [tokens[0]]
            while len(words) < max_tokens:
                words.append(self.lm.step(decoding)[0])
            self.answers[key] = " ".join(words)
        return self.answers[key]


@pytest.fixture(scope="module")
def reference():
    return Reference()


@pytest.fixture(scope="module")
def deployed(moto_server, tmp_path_factory):
    """20 adapters in the store; 2 replicas of 3 adapter slots each."""
    with pytest.MonkeyPatch.context() as env:
        for key, value in moto_server.env.items():
            env.setenv(key, value)  # the replicas' serve.fetch, the ingress's listing
        env.setenv("MODELPLEX_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        peft_lora.publish_adapters(STORE, ADAPTERS)
        instance = start_on_a_free_port()
        # A 50 ms batch window: concurrent calls of one adapter reliably share a batch here.
        serve.run(peft_lora.build(serve, serve.fetch, store=STORE, replicas=2,
                                  adapters_per_replica=3, batch_wait_timeout_s=0.05))
        yield instance
        serve.shutdown()


@pytest.fixture
def client(deployed):
    return OpenAI(base_url=f"{deployed.url}/v1", api_key="unused", max_retries=0, timeout=120)


def stats() -> list[dict]:
    """Each replica's stats(), by asking until both answered."""
    handle = serve.get_deployment_handle("Adapters", "default")
    seen: dict[int, dict] = {}
    for _ in range(50):
        answer = handle.stats.remote().result()
        seen[answer["pid"]] = answer
        if len(seen) == 2:
            break
    return list(seen.values())


def streamed(client: OpenAI, adapter: str, prompt: str, max_tokens: int) -> str:
    chunks = list(client.completions.create(model=adapter, prompt=prompt,
                                            max_tokens=max_tokens, stream=True))
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.model == adapter and c.object == "text_completion" for c in chunks)
    return "".join(c.choices[0].text for c in chunks)


def test_each_adapter_answers_as_itself_whole_and_streamed(client, reference):
    poet = client.completions.create(model="lora-03", prompt="the quiet sea", max_tokens=12)
    text = poet.choices[0].text
    assert text == reference("lora-03", "the quiet sea", 12)
    assert len(text.split()) == 12 and poet.usage.completion_tokens == 12
    assert streamed(client, "lora-03", "the quiet sea", 12) == text
    other = client.completions.create(model="lora-04", prompt="the quiet sea", max_tokens=12)
    assert other.choices[0].text != text  # two adapters, one prompt: different tokens
    assert other.choices[0].text == reference("lora-04", "the quiet sea", 12)

    chat = list(client.chat.completions.create(
        model="lora-03", messages=[{"role": "user", "content": "the quiet sea"}],
        max_tokens=12, stream=True))
    assert chat[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chat) == text


def test_twenty_adapters_three_per_replica_under_concurrent_clients(client, reference):
    """Eight clients stream 60 completions over 20 adapters (each adapter 3 times, shuffled):
    the cache turns over all the time, every answer is its own adapter's, and no replica's
    base ever holds more than its 3 adapters (delete_adapter ran on each eviction)."""
    rng = random.Random(0)
    jobs = [(a, rng.choice(PROMPTS), rng.randint(4, 10)) for a in ADAPTERS for _ in range(3)]
    rng.shuffle(jobs)

    def run(job):
        return job, streamed(client, *job)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(run, jobs))
    wrong = [(job, got, reference(*job)) for job, got in answers if got != reference(*job)]
    assert not wrong, wrong[:3]
    replicas = stats()
    assert len(replicas) == 2
    assert all(len(r["adapters"]) <= 3 for r in replicas), replicas
    loaded = [m for m in serve.list_models("default", "Adapters") if m.state == "loaded"]
    assert sorted(m.model_id for m in loaded) == sorted(a for r in replicas
                                                        for a in r["adapters"])


def test_concurrent_calls_of_one_adapter_share_a_batch(deployed, reference):
    """Six concurrent streams of two adapters through a handle: batches of more than one
    request form, and each still decodes its own adapter."""
    handle = serve.get_deployment_handle("Adapters", "default")

    async def complete(adapter: str, prompt: str) -> str:
        stream = handle.options(multiplexed_model_id=adapter, stream=True).complete.remote(
            prompt, 6)
        return "".join([piece async for piece in stream])

    async def main():
        for adapter in ("lora-10", "lora-11"):  # loaded first: the batches then wait on nothing
            await complete(adapter, "x")
        before = {r["pid"]: r["batch_sizes"] for r in stats()}
        jobs = [(a, p) for a in ("lora-10", "lora-11") for p in PROMPTS[:3]]
        answers = await asyncio.gather(*(complete(a, p) for a, p in jobs))
        return before, jobs, answers

    before, jobs, answers = asyncio.run(main())
    assert answers == [reference(a, p, 6) for a, p in jobs]
    grown = [(size, n - before.get(r["pid"], {}).get(size, 0))
             for r in stats() for size, n in r["batch_sizes"].items()]
    assert any(int(size) > 1 and more > 0 for size, more in grown), grown


def test_models_lists_the_store_and_errors_are_openai_errors(client):
    assert [m.id for m in client.models.list()] == ADAPTERS
    with pytest.raises(NotFoundError, match="no adapter 'gpt-9'"):
        client.completions.create(model="gpt-9", prompt="x")
    with pytest.raises(NotFoundError, match="no adapter 'lora-absent' in the store"):
        client.completions.create(model="lora-absent", prompt="x")
    with pytest.raises(UnprocessableEntityError):
        client.completions.create(model="lora-01", prompt="x", max_tokens=0)
    # The replicas serve on after both.
    assert len(client.completions.create(model="lora-01", prompt="x", max_tokens=2)
               .choices[0].text.split()) == 2


def test_a_reload_survives_the_delete_of_the_copy_before_it(tmp_path):
    """A reload may begin before the evicted copy's ``__del__`` has run (and Ray Serve runs it
    twice): each load has its own key on the base, so that delete leaves the new copy."""
    lm = peft_lora.LM()
    for name, data in peft_lora.adapter_files("lora-19").items():
        (tmp_path / name).write_bytes(data)
    old = lm.load("lora-19", str(tmp_path))
    new = lm.load("lora-19", str(tmp_path))
    assert lm.loaded() == ["lora-19", "lora-19"]
    lm.delete(old)
    lm.delete(old)
    assert lm.loaded() == ["lora-19"]
    decoding, tokens = lm.start(new, ["night"])
    assert tokens == lm.start(new, ["night"])[1]
    with pytest.raises(RuntimeError, match="unloaded during its generation"):
        lm.start(old, ["night"])
    lm.delete(new)
    assert lm.loaded() == []
