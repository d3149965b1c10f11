"""An OpenAI-compatible server of LoRA adapters over one shared base model.

The request body's ``model`` field names an adapter. A FastAPI ingress reads it and passes it
on as the multiplexed model id, so the request goes to an ``Adapters`` replica that already
holds that adapter; there ``@serve.multiplexed`` loads it on a miss and evicts the least
recently used one when the replica is full. ``stream: true`` answers server-sent events in
OpenAI's chunk format, token by token as the adapter produces them. ``GET /v1/models`` lists the
adapters loaded now.

The "model" is small on purpose: a base matrix and rank-4 numpy adapters that pick the next
word from a fixed vocabulary (same adapter and prompt, same words). Everything around it is what
a real adapter server needs. Point the official client at it:

    modelplex run examples.openai_lora:app
    python - <<'EOF'
    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    print(client.completions.create(model="lora-poet", prompt="the sea").choices[0].text)
    for chunk in client.chat.completions.create(
            model="lora-pirate", messages=[{"role": "user", "content": "hi"}], stream=True):
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    EOF
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
import zlib
from typing import AsyncIterator, Literal

import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

import modelplex as serve
from modelplex.handle import DeploymentHandle

VOCAB = (
    "the a sea sky light wind stone river night morning gold silver old new quiet bright "
    "song road home fire rain snow green blue deep high far near slow swift ship sail "
    "ahoy matey treasure island parrot anchor rum captain verse rhyme heart dream moon "
    "star shadow echo whisper garden winter summer autumn spring tide harbor flame ember"
).split()
DIM, RANK = 32, 4
TOKEN_S = 0.002  # stands in for one decoding step of a real model
ADAPTER = re.compile(r"lora-[a-z0-9-]{1,40}")


class Adapter:
    """A low-rank update ``a @ b`` of the shared base, seeded by the adapter's name."""

    def __init__(self, name: str, base: np.ndarray, embeddings: np.ndarray) -> None:
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        a = rng.standard_normal((len(VOCAB), RANK)).astype(np.float32)
        b = rng.standard_normal((RANK, DIM)).astype(np.float32)
        self.weights = base + 0.8 * (a @ b)
        self.embeddings = embeddings

    def next_token(self, state: np.ndarray) -> tuple[int, np.ndarray]:
        token = int(np.argmax(self.weights @ state))
        state = np.tanh(0.6 * state + self.embeddings[token] + 0.1 * np.roll(state, 1))
        return token, state


@serve.deployment(num_replicas=2, max_ongoing_requests=64)
class Adapters:
    """The multiplexed part: adapters load on demand, at most four per replica."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.base = rng.standard_normal((len(VOCAB), DIM)).astype(np.float32)
        self.embeddings = rng.standard_normal((len(VOCAB), DIM)).astype(np.float32)

    @serve.multiplexed(max_num_models_per_replica=4)
    async def get_adapter(self, name: str) -> Adapter:
        if not ADAPTER.fullmatch(name):
            raise LookupError(f"no adapter {name!r}: adapters are named lora-<name>")
        await asyncio.sleep(0.05)  # stands in for reading the adapter's weights
        return Adapter(name, self.base, self.embeddings)

    async def generate(self, prompt: str, max_tokens: int) -> AsyncIterator[str]:
        """Yield one word at a time, as a decoder would."""
        adapter = await self.get_adapter(serve.get_multiplexed_model_id())
        state = np.zeros(DIM, dtype=np.float32)
        for word in prompt.lower().split():
            state[zlib.crc32(word.encode()) % DIM] += 1.0
        for i in range(max_tokens):
            token, state = adapter.next_token(state)
            await asyncio.sleep(TOKEN_S)
            yield ("" if i == 0 else " ") + VOCAB[token]


class CompletionRequest(BaseModel):
    model: str
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1, le=512)
    stream: bool = False


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class ChatRequest(BaseModel):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int = Field(16, ge=1, le=512)
    stream: bool = False


api = FastAPI(title="modelplex LoRA adapters")


@serve.deployment
@serve.ingress(api)
class OpenAIServer:
    def __init__(self, adapters: DeploymentHandle) -> None:
        self.adapters = adapters

    @api.get("/v1/models")
    async def models(self) -> dict:
        loaded = await asyncio.to_thread(serve.list_models, deployment_name="Adapters")
        names = sorted({m.model_id for m in loaded if m.state == "loaded"})
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "modelplex"}
            for name in names]}

    @api.post("/v1/completions")
    async def completions(self, body: CompletionRequest):
        prompt = body.prompt if isinstance(body.prompt, str) else " ".join(body.prompt)
        reply = Reply(body.model, "cmpl", "text_completion")
        return await self.answer(body, prompt, reply)

    @api.post("/v1/chat/completions")
    async def chat(self, body: ChatRequest):
        prompt = " ".join(m.content for m in body.messages)
        reply = Reply(body.model, "chatcmpl", "chat.completion")
        return await self.answer(body, prompt, reply)

    async def answer(self, body: CompletionRequest | ChatRequest, prompt: str, reply: "Reply"):
        tokens = self.adapters.options(
            multiplexed_model_id=body.model, stream=True
        ).generate.remote(prompt, body.max_tokens)
        try:
            first = await tokens.__anext__()  # an unknown adapter answers 404, not a broken stream
        except LookupError as exc:
            return JSONResponse(status_code=404, content={"error": {
                "message": str(exc), "type": "invalid_request_error", "param": "model",
                "code": "model_not_found"}})
        prompt_tokens = len(prompt.split())
        if body.stream:
            return StreamingResponse(reply.events(first, tokens), media_type="text/event-stream")
        words = [first] + [word async for word in tokens]
        return reply.whole("".join(words), prompt_tokens, len(words), body.max_tokens)


class Reply:
    """One answer in OpenAI's shapes: whole, or as chunk events."""

    def __init__(self, model: str, prefix: str, kind: str) -> None:
        self.model = model
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.kind = kind
        self.created = int(time.time())
        self.chat = kind == "chat.completion"

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


app = OpenAIServer.bind(Adapters.bind())

if __name__ == "__main__":
    serve.run(app)
    print("OpenAI-compatible adapters at http://127.0.0.1:8000/v1 (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
