"""The core scenarios again, with replicas as Ray actors on a local Ray.

The tests are the local ones, imported: only the ``serve_instance`` fixture differs (see
conftest.py). Whatever works on one machine must work on Ray unchanged.
"""

from __future__ import annotations

import ray

import modelplex as serve

from ..integration.test_multiplexing import *  # noqa: F401,F403
from ..integration.test_serving import *  # noqa: F401,F403
from ..integration.test_management import (  # noqa: F401
    test_two_routers_load_a_cold_model_once,
)
from ..integration.test_autoscaling import (  # noqa: F401
    test_scales_up_under_load_and_back_down_when_idle,
    test_scales_to_zero_and_serves_the_first_request_after,
)
from ..integration.test_examples import (  # noqa: F401
    test_seed_composition,
    test_seed_model_inferencer_over_local_files,
)


def test_replicas_are_ray_actors(serve_instance):
    @serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.5})
    class Where:
        def __call__(self, request):
            context = ray.get_runtime_context()
            return {"actor": context.get_actor_id(), "node": context.get_node_id()}

    serve.run(Where.bind())
    handle = serve.get_app_handle("default")
    actors = {handle.remote(None).result()["actor"] for _ in range(20)}
    assert len(actors) == 2 and None not in actors
    [proxy] = serve.list_proxies()
    assert proxy.node_id == ray.get_runtime_context().get_node_id()
