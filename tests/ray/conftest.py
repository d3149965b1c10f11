"""Fixtures for the Ray backend: one Ray per test module, modelplex started on it per test.

Starting Ray costs seconds on two cores, so modules share it; ``serve_instance`` here replaces
the local one, so the core scenarios imported from ``tests/integration`` run on Ray unchanged.
"""

from __future__ import annotations


import pytest

import modelplex as serve

from ..conftest import start_on_a_free_port

# A small object store: tests move no large objects, and /dev/shm may be small where CI runs.
OBJECT_STORE_BYTES = 100 * 1024 * 1024


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=OBJECT_STORE_BYTES,
        log_to_driver=False,  # replica logs stay in their files; the test output stays readable
    )
    yield ray
    ray.shutdown()


@pytest.fixture
def serve_instance(local_ray):
    yield start_on_a_free_port(cluster="ray")
    serve.shutdown()
