"""Streamed completions against an OpenAI-compatible adapter server: tokens per second and
time to first token. The client of ``bench.torch``'s adapter scenario, in its own process:

    python -m bench.adapter_load < spec.json   # {"url", "adapters", "prompts", "max_tokens",
                                               #  "concurrency"}; prints one JSON line

``concurrency`` workers take the next completion of the trace (``adapters[i]`` with
``prompts[i % len(prompts)]``), POST it to ``/v1/completions`` with ``stream: true`` and read
the server-sent events: the first event with text is the first token; a token is an event
with text; ``data: [DONE]`` ends a good stream.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from .client import client_main, percentile

__all__ = ["Completion", "parse_events", "summarize_completions"]


@dataclass(frozen=True)
class Completion:
    ttft_s: float | None  # to the first token; None if none came
    duration_s: float
    tokens: int
    error: str | None


def parse_events(lines: Iterable[str]) -> tuple[list[str], bool]:
    """The text of each ``data:`` event with text, and whether ``[DONE]`` ended them."""
    texts: list[str] = []
    for line in lines:
        if not line.startswith("data: "):
            continue
        payload = line[len("data: "):].strip()
        if payload == "[DONE]":
            return texts, True
        text = json.loads(payload)["choices"][0].get("text")
        if text:
            texts.append(text)
    return texts, False


def summarize_completions(done: list[Completion], elapsed_s: float) -> dict:
    ttft = sorted(c.ttft_s * 1000 for c in done if c.ttft_s is not None and c.error is None)
    tokens = sum(c.tokens for c in done if c.error is None)
    errors = Counter(c.error for c in done if c.error is not None)
    return {
        "completions": len(done),
        "errors": sum(errors.values()),
        "error_causes": dict(errors),
        "elapsed_s": round(elapsed_s, 3),
        "tokens": tokens,
        "tokens_per_s": round(tokens / elapsed_s, 1) if elapsed_s > 0 else 0.0,
        "ttft_p50_ms": round(percentile(ttft, 50), 1),
        "ttft_p90_ms": round(percentile(ttft, 90), 1),
        "ttft_p99_ms": round(percentile(ttft, 99), 1),
        "completion_p50_s": round(percentile(sorted(c.duration_s for c in done), 50), 3),
    }


async def _run(spec: dict) -> dict:
    import asyncio

    import aiohttp

    url = spec["url"].rstrip("/") + "/v1/completions"
    adapters, prompts = spec["adapters"], spec["prompts"]
    jobs = iter(range(len(adapters)))
    done: list[Completion] = []
    timeout = aiohttp.ClientTimeout(total=spec.get("timeout_s", 300))

    async def one(session: aiohttp.ClientSession, i: int) -> Completion:
        body = {"model": adapters[i], "prompt": prompts[i % len(prompts)],
                "max_tokens": spec["max_tokens"], "stream": True}
        started = time.monotonic()
        first = None
        lines: list[str] = []
        try:
            async with session.post(url, json=body) as response:
                if response.status != 200:
                    text = (await response.text())[:60]
                    return Completion(None, time.monotonic() - started, 0,
                                      f"{response.status} {text}")
                async for raw in response.content:
                    line = raw.decode()
                    if first is None and line.startswith("data: {") and '"text": ""' not in line:
                        first = time.monotonic() - started
                    lines.append(line)
        except Exception as exc:
            return Completion(None, time.monotonic() - started, 0, type(exc).__name__)
        texts, complete = parse_events(lines)
        error = None if complete and len(texts) == spec["max_tokens"] else "incomplete stream"
        return Completion(first, time.monotonic() - started, len(texts), error)

    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker() -> None:
            for i in jobs:
                done.append(await one(session, i))

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))
        elapsed = time.monotonic() - started
    return summarize_completions(done, elapsed)


if __name__ == "__main__":
    client_main(_run)
