"""Fixtures for the Ray backend: one Ray per test module, modelplex started on it per test.

Starting Ray costs seconds on two cores, so modules share it; ``serve_instance`` here replaces
the local one, so the core scenarios imported from ``tests/integration`` run on Ray unchanged.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import pytest

import modelplex as serve

from ..conftest import start_on_a_free_port

# A small object store: tests move no large objects, and /dev/shm may be small where CI runs.
OBJECT_STORE_BYTES = 100 * 1024 * 1024


def _timed_out(exc: Exception) -> bool:
    return "timed out during startup" in str(exc)


@contextlib.contextmanager
def ray_cluster(workers: list[dict], **init) -> Iterator[tuple[object, list]]:
    """A head with no CPUs and the given worker nodes on this machine, with this process
    connected; shut down however it ends, a node that failed to start included (else the
    next module's ``ray.init`` would find the half-started cluster).

    A raylet that misses Ray's 30 s to register (``init_local_ray`` says when) gets the
    whole cluster started once more, after a pause."""
    import time

    import ray
    from ray.cluster_utils import Cluster

    node_args = {"object_store_memory": OBJECT_STORE_BYTES}

    def start() -> tuple[Cluster, list]:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 0, "include_dashboard": False, **node_args},
        )
        try:
            nodes = [cluster.add_node(**node_args, **worker) for worker in workers]
            cluster.wait_for_nodes()
        except BaseException:
            cluster.shutdown()
            raise
        return cluster, nodes

    try:
        cluster, nodes = start()
    except Exception as exc:
        if not _timed_out(exc):
            raise
        time.sleep(5)
        cluster, nodes = start()
    try:
        ray.init(address=cluster.address, log_to_driver=False, **init)
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


def init_local_ray(**options) -> None:
    """``ray.init`` of a one-node Ray of its own, even where a stray one runs on this machine.

    On two loaded cores a new raylet sometimes misses Ray's fixed 30 s to register with its
    GCS (often while the previous module's cluster is still going down): one more try then,
    after a pause, rather than failing every test of the module."""
    import time

    import ray

    options = {"address": "local", "num_cpus": 2, "include_dashboard": False,
               "object_store_memory": OBJECT_STORE_BYTES,
               "log_to_driver": False,  # replica logs stay in their files
               **options}
    try:
        ray.init(**options)
    except Exception as exc:
        if not _timed_out(exc):
            raise
        ray.shutdown()
        time.sleep(5)
        ray.init(**options)


@pytest.fixture(scope="module")
def local_ray():
    import ray

    init_local_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def cluster_options(local_ray) -> dict:
    return {"cluster": "ray"}


@pytest.fixture
def serve_instance(local_ray):
    yield start_on_a_free_port(cluster="ray")
    serve.shutdown()
