"""The disk tier on Ray: one artifact cache per node. Two worker nodes on one machine
(``ray.cluster_utils.Cluster``), one replica on each, and a moto server that counts downloads
(GETs from byte 0): a model loaded on both nodes is downloaded once per node, and loaded again
after it was evicted from memory, it comes from each node's disk."""

from __future__ import annotations

import os

import pytest
import ray

import modelplex as serve
from bench.s3_server import CREDENTIALS, S3Server

from .conftest import ray_cluster


@pytest.fixture(scope="module")
def s3():
    with S3Server() as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head with no CPUs and two workers with one replica slot each; every Ray worker of
    this job gets the cache directory and the fake S3 keys in its environment."""
    cache = tmp_path_factory.mktemp("artifacts")
    env = {"MODELPLEX_CACHE_DIR": str(cache), **CREDENTIALS}
    nodes = [{"num_cpus": 1, "resources": {"slot": 1}}] * 2
    with ray_cluster(nodes, runtime_env={"env_vars": env}) as (_, workers):
        yield workers, cache


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0, "resources": {"slot": 1}})
class Weights:
    def __init__(self, options: dict) -> None:
        self.options = options

    @serve.multiplexed(max_num_models_per_replica=1)
    async def get_model(self, model_id: str) -> int:
        path = await serve.fetch(f"s3://models/{model_id}.bin", storage_options=self.options)
        return os.path.getsize(path)

    async def __call__(self, request=None) -> dict:
        size = await self.get_model(serve.get_multiplexed_model_id())
        return {"node": ray.get_runtime_context().get_node_id(), "size": size}


def test_each_node_downloads_once(cluster, s3):
    workers, cache = cluster
    nodes = sorted(w.node_id for w in workers)
    s3.put("models", {"w.bin": os.urandom(1 << 20), "x.bin": os.urandom(1 << 10)})
    s3.reset()
    serve.start(http_options={"port": 0}, cluster="ray")
    try:
        serve.run(Weights.bind(s3.options))
        assert len(serve.preload_model("w", num_replicas=2)) == 2
        assert s3.of("models/w.bin").downloads == 2  # one per node

        listing = serve.list_artifacts()
        assert sorted(a.node_id for a in listing) == nodes
        assert {(a.uri, a.size_bytes, a.held) for a in listing} == {("s3://models/w.bin", 1 << 20, True)}
        assert sorted(os.listdir(cache)) == [f"node-{n}" for n in nodes]

        # x takes each replica's one memory slot, then w comes back: from each node's disk.
        assert len(serve.preload_model("x", num_replicas=2)) == 2
        assert len(serve.preload_model("w", num_replicas=2)) == 2
        stats = s3.of("models/w.bin")
        assert (stats.downloads, stats.bytes_sent) == (2, 2 << 20)
        assert stats.heads == 4  # each load checked its node's copy against the store
        handle = serve.get_app_handle("default")
        answers = [handle.options(multiplexed_model_id="w").remote().result() for _ in range(10)]
        assert {a["size"] for a in answers} == {1 << 20}
        assert s3.of("models/w.bin").downloads == 2

        listing = serve.list_artifacts()
        assert sorted({a.node_id for a in listing}) == nodes and len(listing) == 4
    finally:
        serve.shutdown()
