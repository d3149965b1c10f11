"""The core scenarios again, with replicas as Ray actors on a local Ray.

The tests are the local ones, imported: only the ``serve_instance`` fixture differs (see
conftest.py). Whatever works on one machine must work on Ray unchanged.
"""

from __future__ import annotations

import ray
import requests

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
from ..integration.test_tenants import (  # noqa: F401
    test_a_quiet_model_is_served_ahead_of_a_flood,
    test_the_per_model_cap_holds_across_two_replicas_and_two_routers,
)
from ..integration.test_ingress import Api, Scorer


def test_replicas_are_ray_actors(serve_instance):
    @serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.5})
    class Where:
        def __call__(self, request):
            context = ray.get_runtime_context()
            replica = serve.get_replica_context()  # what Ray gave it, in Ray's names
            return {"actor": context.get_actor_id(), "node": context.get_node_id(),
                    "gpu_ids": replica.gpu_ids, "assigned": dict(replica.assigned_resources)}

    serve.run(Where.bind())
    handle = serve.get_app_handle("default")
    answers = [handle.remote(None).result() for _ in range(20)]
    actors = {a["actor"] for a in answers}
    assert len(actors) == 2 and None not in actors
    assert all(a["gpu_ids"] == () and a["assigned"] == {"CPU": 0.5} for a in answers)
    # Ray is up already: its inventory is ray.init's to say, not serve.start's.
    assert serve.status().resources == {}
    [proxy] = serve.list_proxies()
    assert proxy.node_id == ray.get_runtime_context().get_node_id()


def test_fastapi_ingress_on_ray(serve_instance):
    """A FastAPI ingress class, its multiplexed loader and a handle behind it, in Ray actors."""
    serve.run(Api.options(num_replicas=1).bind(Scorer.bind(), "hi"), route_prefix="/main")
    url = serve_instance.url + "/main"
    assert requests.get(url + "/hello/ray", params={"times": 2}).json() == {"text": "hi ray hi ray"}
    r = requests.get(url + "/models/m1", headers={"serve_multiplexed_model_id": "m1"})
    assert r.status_code == 200 and r.json()["model"] == "model-m1"
    assert [m.model_id for m in serve.list_models(deployment_name="Api")] == ["m1"]
    assert requests.get(url + "/compose/m2").json() == {"model": "scorer-m2", "x": 1}
    assert requests.get(url + "/hello/ray", params={"times": "x"}).status_code == 422


def test_start_leaves_the_inventory_of_a_running_ray_to_ray(local_ray):
    import pytest

    from modelplex._driver.runtime import current_runtime

    with pytest.raises(ValueError, match="Ray is already initialized: give num_cpus"):
        serve.start(cluster="ray", num_gpus=1)
    assert current_runtime() is None
