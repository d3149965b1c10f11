"""``@serve.batch`` in real replicas, over HTTP and through handles; and its example."""

from __future__ import annotations

import concurrent.futures
from collections import defaultdict

import requests

import modelplex as serve

H = "serve_multiplexed_model_id"


@serve.deployment(max_ongoing_requests=64)
class Batched:
    def __init__(self):
        self.batches = 0

    @serve.multiplexed(max_num_models_per_replica=4)
    async def get_model(self, model_id):
        if model_id == "broken":
            raise RuntimeError("weights are corrupt")
        return model_id.upper()

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.2)
    async def run(self, items):
        model = await self.get_model(serve.get_multiplexed_model_id())
        self.batches += 1
        if "short" in items:
            return items[:-1]
        return [{"model": model, "item": i, "size": len(items), "batch": self.batches}
                for i in items]

    async def __call__(self, request):
        return await self.run(request.query_params.get("x", ""))

    def resize(self, size, wait):
        self.run.set_max_batch_size(size)
        self.run.set_batch_wait_timeout_s(wait)


def post_many(url, pairs, as_body=False):
    """GET ``url`` concurrently for each (model id, x): x as a query parameter or the body."""
    with concurrent.futures.ThreadPoolExecutor(len(pairs)) as pool:
        futures = [
            pool.submit(requests.get, url, headers={H: m}, timeout=60,
                        **({"data": x} if as_body else {"params": {"x": x}}))
            for m, x in pairs
        ]
        return [f.result() for f in futures]


def test_batches_over_http_group_by_model_and_errors_reach_everyone(serve_instance):
    serve.run(Batched.bind())
    answers = post_many(serve_instance.url, [("a" if i % 3 else "b", str(i)) for i in range(12)])
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    by_batch = defaultdict(set)
    for r, i in zip(answers, range(12)):
        body = r.json()
        assert body["model"] == ("A" if i % 3 else "B") and body["item"] == str(i)
        by_batch[body["batch"]].add(body["model"])
    assert all(len(models) == 1 for models in by_batch.values())  # no batch mixes models
    assert max(r.json()["size"] for r in answers) > 1  # concurrent requests shared a batch

    broken = post_many(serve_instance.url, [("broken", "1"), ("broken", "2")])
    assert [r.status_code for r in broken] == [500, 500]
    assert all("weights are corrupt" in r.text for r in broken)
    short = post_many(serve_instance.url, [("a", "short"), ("a", "x")])
    assert all(r.status_code == 500 and "returned 1 results for a batch of 2" in r.text
               for r in short), [r.text for r in short]


def test_batches_through_handles_and_live_resizing(serve_instance):
    handle = serve.run(Batched.bind())
    handle.resize.remote(2, 0.2).result()
    calls = [handle.options(multiplexed_model_id="m").run.remote(str(i)) for i in range(6)]
    results = [c.result() for c in calls]
    assert [r["item"] for r in results] == [str(i) for i in range(6)]
    assert {r["size"] for r in results} == {2}
    handle.resize.remote(8, 0.5).result()
    calls = [handle.options(multiplexed_model_id="m").run.remote(str(i)) for i in range(6)]
    results = [c.result() for c in calls]
    assert {r["size"] for r in results} == {6} and len({r["batch"] for r in results}) == 1

