"""An OpenAI-compatible server of peft LoRA adapters over one transformers causal LM.

Each ``Adapters`` replica holds one base model: a small Llama made from a config with seeded
random weights at setup (nothing is downloaded, and every replica's base is the same). The
request's ``model`` names an adapter; the ingress passes it on as the multiplexed model id, so
the request goes to a replica that holds that adapter. There ``@serve.multiplexed`` fetches the
adapter's safetensors from the store with ``serve.fetch`` (once per node: an adapter evicted
from memory reloads from disk) and loads it on the shared base with peft's ``load_adapter``;
evicting it runs ``delete_adapter``. ``@serve.batch`` groups requests by adapter, so one batch
decodes one adapter, a token per request per step, and ``stream: true`` answers each token as
it is made, in OpenAI's server-sent events.

    ADAPTER_STORE=s3://adapters python examples/peft_lora.py --publish lora-poet lora-pirate
    ADAPTER_STORE=s3://adapters modelplex run examples.peft_lora:app

then point the official client at it (``base_url="http://127.0.0.1:8000/v1"``). ``build`` takes
the ``serve`` module and a fetch function, so the same deployments run under Ray Serve too
(``bench.torch``, with a plain download in place of ``serve.fetch``). Needs
``pip install 'modelplex[examples,torch,s3]'``.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at runtime,
# and Ray Serve's ingress would see them as strings it cannot resolve (a 422 for every body).
import asyncio
import itertools
import json
import os
import re
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Literal

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is made locally

import torch
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

import modelplex

VOCAB = (
    "the a sea sky light wind stone river night morning gold silver old new quiet bright "
    "song road home fire rain snow green blue deep high far near slow swift ship sail "
    "ahoy matey treasure island parrot anchor rum captain verse rhyme heart dream moon "
    "star shadow echo whisper garden winter summer autumn spring tide harbor flame ember"
).split()
BASE_CONFIG = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2,
               "max_position_embeddings": 512}
LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj", "o_proj", "down_proj"]}
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
ADAPTER = re.compile(r"lora-[a-z0-9-]{1,40}")
MAX_PROMPT_TOKENS = 256
MAX_TOKENS = 256
NO_ADAPTER = "none"  # the base's own no-op adapter: peft needs one to exist before others load
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# ---- the model: one base, adapters on it -----------------------------------------------------


def make_tokenizer() -> Any:
    """A word-level tokenizer over ``VOCAB``, built in code (``[PAD]`` 0, ``[UNK]`` 1)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{word: i + 2 for i, word in enumerate(VOCAB)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece()  # words joined by spaces
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]",
                                   unk_token="[UNK]", padding_side="left",
                                   truncation_side="left")


def make_base() -> Any:
    """The base model, the same on every replica: random weights from a fixed seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(VOCAB) + 2, pad_token_id=0, **BASE_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(config).eval()


def adapter_files(name: str) -> dict[str, bytes]:
    """A LoRA adapter for the base, as ``save_pretrained`` writes it, seeded by its name: what
    a fine-tune would publish to the store."""
    from peft import LoraConfig, get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(name.encode()))
        # init_lora_weights=False: A and B random, so each adapter changes the output.
        model = get_peft_model(make_base(), LoraConfig(init_lora_weights=False, **LORA))
        with tempfile.TemporaryDirectory() as directory:
            model.save_pretrained(directory)
            return {f: open(os.path.join(directory, f), "rb").read() for f in ADAPTER_FILES}


def publish_adapters(store: str, names: list[str], **storage_options: Any) -> None:
    """Write each adapter's files under ``<store>/<name>/`` (any fsspec URI)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(store, **storage_options)
    for name in names:
        folder = f"{root.rstrip('/')}/{name}"
        fs.makedirs(folder, exist_ok=True)  # a local folder; in S3, the bucket if need be
        for filename, data in adapter_files(name).items():
            fs.pipe_file(f"{folder}/{filename}", data)


@dataclass
class Decoding:
    """One batch's generation state between steps."""

    adapter: str
    cache: Any
    mask: torch.Tensor
    positions: torch.Tensor
    last: torch.Tensor  # the tokens just made, one per row


class LM:
    """The base model with its loaded adapters. peft's active adapter is one setting of the
    whole model, so every use (load, delete, a prefill or a decoding step of any batch) holds
    one lock and names its adapter: batches of different adapters interleave step by step."""

    def __init__(self) -> None:
        from peft import LoraConfig, get_peft_model

        self.tokenizer = make_tokenizer()
        self.model = get_peft_model(make_base(), LoraConfig(**LORA), adapter_name=NO_ADAPTER)
        self.model.to(DEVICE).eval()
        self.lock = threading.Lock()
        self.loads = itertools.count()

    def load(self, name: str, directory: str) -> str:
        """Load an adapter; returns its key on the base (``<name>#<n>``). A key per load: a
        reload may begin while the previous copy's ``__del__`` has yet to run, and deleting
        that copy must not delete the new one."""
        key = f"{name}#{next(self.loads)}"
        with self.lock:
            self.model.load_adapter(directory, adapter_name=key, torch_device=DEVICE)
        return key

    def delete(self, key: str) -> None:
        with self.lock:
            if key in self.model.peft_config:
                self.model.delete_adapter(key)

    def loaded(self) -> list[str]:
        """The adapters on the base, by name (a name twice while a reload overlaps)."""
        return sorted(k.split("#")[0] for k in self.model.peft_config if k != NO_ADAPTER)

    def start(self, adapter: str, prompts: list[str]) -> tuple[Decoding, list[str]]:
        """Read the prompts (left-padded to one length) and make each row's first token."""
        with self.lock:  # a tokenizer that pads and truncates is not for two threads at once
            encoded = self.tokenizer(prompts, padding=True, truncation=True,
                                     max_length=MAX_PROMPT_TOKENS, return_tensors="pt")
        encoded = encoded.to(DEVICE)
        mask = encoded.attention_mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        decoding = Decoding(adapter, None, mask, positions, encoded.input_ids)
        return decoding, self._forward(decoding)

    def step(self, decoding: Decoding) -> list[str]:
        """One more token per row."""
        decoding.mask = torch.cat([decoding.mask, torch.ones_like(decoding.last)], dim=-1)
        decoding.positions = decoding.positions[:, -1:] + 1
        return self._forward(decoding)

    def _forward(self, d: Decoding) -> list[str]:
        with self.lock, torch.inference_mode():
            if d.adapter not in self.model.peft_config:  # never decode with another adapter
                raise RuntimeError(f"adapter {d.adapter!r} was unloaded during its generation")
            self.model.set_adapter(d.adapter)
            out = self.model(input_ids=d.last, attention_mask=d.mask, position_ids=d.positions,
                             cache=d.cache, use_cache=True)
            logits = out.logits[:, -1]
            logits[:, :2] = -torch.inf  # never [PAD] or [UNK]
            logits.scatter_(1, d.last[:, -1:], -torch.inf)  # nor the word just said, again
            d.cache = out.cache
            d.last = logits.argmax(-1, keepdim=True)
            return self.tokenizer.convert_ids_to_tokens(d.last[:, 0].tolist())


class LoadedAdapter:
    """What the multiplexed loader returns: unloading it deletes the adapter from the base."""

    def __init__(self, lm: LM, key: str) -> None:
        self.lm = lm
        self.key = key

    def __del__(self) -> None:
        self.lm.delete(self.key)  # once per key; Ray Serve calls it, then so does the GC


# ---- the deployments ---------------------------------------------------------------------------


Fetch = Callable[[str], Awaitable[str]]  # a store URI (a prefix) -> a local directory


class CompletionRequest(BaseModel):
    model: str
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1, le=MAX_TOKENS)
    stream: bool = False


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class ChatRequest(BaseModel):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int = Field(16, ge=1, le=MAX_TOKENS)
    stream: bool = False


def build(serve: Any, fetch: Fetch, *, store: str, replicas: int = 2,
          adapters_per_replica: int = 3, max_batch_size: int = 8,
          batch_wait_timeout_s: float = 0.005, max_ongoing_requests: int = 64,
          adapter_options: dict | None = None, ingress_options: dict | None = None) -> Any:
    """The application, bound, for ``serve`` (modelplex, or Ray Serve's module). The options
    are each deployment's ``ray_actor_options`` (``num_cpus``, ``num_gpus``)."""
    api = FastAPI(title="LoRA adapters")

    @serve.deployment(num_replicas=replicas, max_ongoing_requests=max_ongoing_requests,
                      ray_actor_options=adapter_options or {})
    class Adapters:
        def __init__(self, store: str) -> None:
            self.store = store.rstrip("/")
            self.lm = LM()
            self.batch_sizes: dict[int, int] = {}  # what @serve.batch made, for stats()

        @serve.multiplexed(max_num_models_per_replica=adapters_per_replica)
        async def get_adapter(self, name: str) -> LoadedAdapter:
            if not ADAPTER.fullmatch(name):
                raise LookupError(f"no adapter {name!r}: adapters are named lora-<name>")
            directory = await fetch(f"{self.store}/{name}/")
            return LoadedAdapter(self.lm, await asyncio.to_thread(self.lm.load, name, directory))

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s,
                     max_concurrent_batches=adapters_per_replica)
        async def generate(self, prompts: list[str],
                           limits: list[int]) -> AsyncIterator[list[Any]]:
            """One adapter's batch: each step yields a token per request, ``StopIteration``
            for a request that has all of its tokens."""
            adapter = await self.get_adapter(serve.get_multiplexed_model_id())
            self.batch_sizes[len(prompts)] = self.batch_sizes.get(len(prompts), 0) + 1
            decoding, tokens = await asyncio.to_thread(self.lm.start, adapter.key, prompts)
            for made in range(1, max(limits) + 1):
                yield [token if made <= limit else StopIteration
                       for token, limit in zip(tokens, limits)]
                if made < max(limits):
                    tokens = await asyncio.to_thread(self.lm.step, decoding)

        def stats(self) -> dict:
            """This replica: its process, the adapters on its base, the batches it ran."""
            return {"pid": os.getpid(), "adapters": self.lm.loaded(),
                    "batch_sizes": dict(self.batch_sizes)}

        async def complete(self, prompt: str, max_tokens: int) -> AsyncIterator[str]:
            """The words of one completion, as they are made."""
            first = True
            async for token in self.generate(prompt, max_tokens):
                yield token if first else " " + token
                first = False

    @serve.deployment(ray_actor_options=ingress_options or {})
    @serve.ingress(api)
    class OpenAIServer:
        def __init__(self, adapters: Any, store: str) -> None:
            self.adapters = adapters
            self.store = store

        @api.get("/v1/models")
        async def models(self) -> dict:
            names = await asyncio.to_thread(list_adapters, self.store)
            return {"object": "list", "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "modelplex"}
                for name in names]}

        @api.post("/v1/completions")
        async def completions(self, body: CompletionRequest):
            prompt = body.prompt if isinstance(body.prompt, str) else " ".join(body.prompt)
            return await self.answer(body, prompt, Reply(body.model, "text_completion"))

        @api.post("/v1/chat/completions")
        async def chat(self, body: ChatRequest):
            prompt = " ".join(m.content for m in body.messages)
            return await self.answer(body, prompt, Reply(body.model, "chat.completion"))

        async def answer(self, body: Any, prompt: str, reply: "Reply"):
            tokens = self.adapters.options(
                multiplexed_model_id=body.model, stream=True
            ).complete.remote(prompt, body.max_tokens)
            try:
                first = await tokens.__anext__()  # an unknown adapter is a 404, not a broken stream
            except LookupError as exc:
                return not_found(str(exc))
            except FileNotFoundError:  # the store has none (serve.fetch's ModelNotFoundError)
                return not_found(f"no adapter {body.model!r} in the store")
            if body.stream:
                return StreamingResponse(reply.events(first, tokens),
                                         media_type="text/event-stream")
            words = [first] + [word async for word in tokens]
            return reply.whole("".join(words), len(prompt.split()), len(words), body.max_tokens)

    return OpenAIServer.bind(Adapters.bind(store), store)


def list_adapters(store: str) -> list[str]:
    """The adapters the store holds: its folders with an adapter's name."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(store)
    try:
        entries = fs.ls(root, detail=False, refresh=True)
    except FileNotFoundError:
        return []
    return sorted(n for n in (e.rstrip("/").rsplit("/", 1)[-1] for e in entries)
                  if ADAPTER.fullmatch(n))


def not_found(message: str) -> JSONResponse:
    return JSONResponse(status_code=404, content={"error": {
        "message": message, "type": "invalid_request_error", "param": "model",
        "code": "model_not_found"}})


class Reply:
    """One answer in OpenAI's shapes: whole, or as chunk events."""

    def __init__(self, model: str, kind: str) -> None:
        self.model = model
        self.kind = kind
        self.chat = kind == "chat.completion"
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, text: str, prompt_tokens: int, completion_tokens: int, limit: int) -> dict:
        finish = "length" if completion_tokens >= limit else "stop"
        choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                   "finish_reason": finish} if self.chat else
                  {"index": 0, "text": text, "logprobs": None, "finish_reason": finish})
        return {**self._head(self.kind), "choices": [choice], "usage": {
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}}

    def _chunk(self, piece: str | None, finish: str | None, first: bool = False) -> bytes:
        if self.chat:
            delta = {} if piece is None else {"content": piece}
            if first:
                delta["role"] = "assistant"
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
            kind = "text_completion"
        return f"data: {json.dumps({**self._head(kind), 'choices': [choice]})}\n\n".encode()

    async def events(self, first: str, rest: AsyncIterator[str]) -> AsyncIterator[bytes]:
        yield self._chunk(first, None, first=True)
        async for piece in rest:
            yield self._chunk(piece, None)
        yield self._chunk(None, "length")
        yield b"data: [DONE]\n\n"


def store_from_env() -> str:
    return os.environ.get("ADAPTER_STORE", "s3://adapters")


app = build(modelplex, modelplex.fetch, store=store_from_env())

if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--publish", nargs="*", metavar="NAME", default=[],
                        help="write these adapters to $ADAPTER_STORE first, then serve")
    args = parser.parse_args()
    publish_adapters(store_from_env(), args.publish)
    modelplex.run(app)
    print("OpenAI-compatible adapters at http://127.0.0.1:8000/v1 (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        modelplex.shutdown()
