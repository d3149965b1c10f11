"""Several Ray nodes on one machine (``ray.cluster_utils.Cluster``): a head with no CPUs for
replicas, and two workers. Replicas go where their resources are, requests cross nodes, proxies
on different nodes agree on where a cold model goes, and a lost node's replicas come back on
the nodes that remain. The node removal comes last: it changes the cluster for what follows."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import threading

import pytest
import ray
import requests

import modelplex as serve

from ..conftest import free_port, start_cli, wait_until
from ..integration.models import make_recorder, read_events
from .conftest import OBJECT_STORE_BYTES, ray_cluster

H = "serve_multiplexed_model_id"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def cluster():
    workers = [{"num_cpus": 2, "resources": {"zone_a": 1}}, {"num_cpus": 2, "resources": {"zone_b": 1}}]
    with ray_cluster(workers) as started:
        yield started


@pytest.fixture
def serving(cluster):
    serve.start(http_options={"port": 0}, cluster="ray", proxy_location="every_node")
    yield cluster
    serve.shutdown()


@serve.deployment
class Where:
    def __call__(self, request=None):
        return {"node": ray.get_runtime_context().get_node_id(), "model": serve.get_multiplexed_model_id()}


def nodes_of(handle, calls: int = 30) -> set[str]:
    return {handle.remote().result()["node"] for _ in range(calls)}


def test_replicas_spread_over_nodes_by_resources(serving):
    cluster, (zone_a, zone_b) = serving
    head = ray.get_runtime_context().get_node_id()
    spread = serve.run(
        Where.options(name="spread", num_replicas=2, ray_actor_options={"num_cpus": 1}).bind(),
        name="spread", route_prefix="/spread",
    )
    assert nodes_of(spread) == {zone_a.node_id, zone_b.node_id}
    pinned = serve.run(
        Where.options(name="b", num_replicas=2, ray_actor_options={"num_cpus": 0.5, "resources": {"zone_b": 0.5}}).bind(),
        name="b", route_prefix="/b",
    )
    assert nodes_of(pinned) == {zone_b.node_id}
    # The driver's proxy, on the head, reaches a model on a worker node.
    driver_proxy = serve.list_proxies()[0]
    assert driver_proxy.node_id == head
    resp = requests.get(driver_proxy.url + "/b", headers={H: "7"}, timeout=30)
    assert resp.status_code == 200 and resp.json() == {"node": zone_b.node_id, "model": "7"}


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 1})
class Held:
    @serve.multiplexed(max_num_models_per_replica=4)
    async def get_model(self, model_id):
        return model_id

    async def __call__(self, request=None):
        return await self.get_model(serve.get_multiplexed_model_id())


def test_status_shows_replicas_on_two_nodes(serving):
    """serve.status() and `modelplex status --json` against the driver's proxy agree: two
    replicas on the two worker nodes, each with its pid, and the models they hold."""
    _, (zone_a, zone_b) = serving
    handle = serve.run(Held.bind(), name="held", route_prefix="/held")
    for model in ("1", "2", "3", "4"):
        assert handle.options(multiplexed_model_id=model).remote().result() == model
    replicas = serve.status().applications["held"].deployments["Held"].replicas
    assert {r.node for r in replicas} == {zone_a.node_id, zone_b.node_id}
    assert all(r.state == "running" and r.pid for r in replicas)
    done = subprocess.run(
        [sys.executable, "-m", "modelplex._driver.cli", "status", "--json",
         "--address", serve.list_proxies()[0].url],
        env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)["applications"]["held"]["deployments"]["Held"]
    assert {r["node"] for r in doc["replicas"]} == {zone_a.node_id, zone_b.node_id}
    assert {r["pid"] for r in doc["replicas"]} == {r.pid for r in replicas}
    assert sorted(m["model_id"] for r in doc["replicas"] for m in r["models"]) == ["1", "2", "3", "4"]
    serve.delete("held")


def test_every_node_has_a_proxy_and_two_proxies_load_a_cold_model_once(serving, tmp_path):
    events = str(tmp_path / "events")
    recorder = make_recorder(capacity=2).options(num_replicas=2, max_ongoing_requests=64)
    serve.run(recorder.bind(events, load_s=0.5))
    proxies = serve.list_proxies()
    assert len({p.node_id for p in proxies}) == 3  # the head's and one per worker
    first, second = proxies[1].url, proxies[2].url
    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        results = list(
            pool.map(
                lambda url: requests.get(url, headers={H: "cold"}, timeout=60),
                [first, second] * 20,
            )
        )
    assert [r.status_code for r in results] == [200] * 40
    assert read_events(events) == ["load cold"]
    assert len({r.json()["pid"] for r in results}) == 1


def test_a_node_proxy_holds_a_models_backlog_to_its_bound(serving):
    """The node proxies' routers get the tenant policy with the replica set, as all do."""
    from ..integration.test_tenants import get, make_tenants

    serve.run(make_tenants(num_replicas=1, max_ongoing_requests=1,
                           max_queued_requests_per_model=1).bind())
    proxy = serve.list_proxies()[1].url
    assert get(proxy, "noisy", 0).status_code == 200
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: get(proxy, "noisy", 1.5), range(6)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200, 200, 429, 429, 429, 429], [r.text for r in answers]
    assert "Model 'noisy'" in next(r.text for r in answers if r.status_code == 429)


def test_cli_points_at_the_cluster(cluster, tmp_path):
    """A second driver joins the running cluster with --ray-address and serves on it."""
    ray_cluster, _ = cluster
    source = (
        "import modelplex as serve, ray\n"
        "@serve.deployment(ray_actor_options={'num_cpus': 0.5})\n"
        "class Hello:\n"
        "    def __call__(self, request):\n"
        "        return ray.get_runtime_context().get_node_id()\n"
        "app = Hello.bind()\n"
    )
    proc, url = start_cli(tmp_path, source, "--port", "0", "--ray-address", ray_cluster.address)
    try:
        node = requests.get(url, timeout=30).text
        assert node in {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()


def test_cluster_doc_examples_run(cluster):
    """docs/cluster.md's Python blocks, on this cluster (ray.init is done, so "auto" reuses it)."""
    text = open(os.path.join(ROOT, "docs", "cluster.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 3
    namespace: dict = {"__name__": "cluster_doc", "app": Where.options(name="doc").bind()}
    for block in blocks:
        # Every node of this cluster shares one address: let each proxy pick its own port.
        code = block.replace('"0.0.0.0"', '"127.0.0.1"').replace('"port": 8000', '"port": 0')
        try:
            exec(compile(code, "docs/cluster.md", "exec"), namespace)
        finally:
            serve.shutdown()


def test_a_proxy_that_cannot_listen_is_a_clear_error(cluster):
    port = free_port()
    with pytest.raises(RuntimeError, match=f"cannot start the HTTP proxy on node .*{port}"):
        # The head's proxy takes the port; the workers, on the same address here, cannot.
        serve.start(http_options={"port": port}, cluster="ray", proxy_location="every_node")
    from modelplex._driver import runtime as _runtime

    assert _runtime.current_runtime() is None
    serve.start(http_options={"port": port}, cluster="ray")  # and nothing was left holding it
    serve.shutdown()


def test_a_node_that_joins_gets_a_proxy_and_loses_it_when_it_leaves(serving):
    cluster, _ = serving
    serve.run(Where.options(name="joined").bind())
    before = {p.node_id for p in serve.list_proxies()}
    node = cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE_BYTES)
    try:
        [proxy] = wait_until(
            lambda: [p for p in serve.list_proxies() if p.node_id == node.node_id],
            timeout=60,
            message="the new node got no proxy",
        )
        resp = requests.get(proxy.url, headers={H: "9"}, timeout=30)
        assert resp.status_code == 200 and resp.json()["model"] == "9"
    finally:
        cluster.remove_node(node)
    wait_until(
        lambda: {p.node_id for p in serve.list_proxies()} == before,
        timeout=60,
        message="the proxy of a node that left is still listed",
    )


def test_a_lost_node_is_replaced_and_serving_goes_on(serving):
    cluster, (zone_a, zone_b) = serving
    handle = serve.run(
        Where.options(name="spread", num_replicas=2, ray_actor_options={"num_cpus": 1}).bind(),
        name="spread", route_prefix="/spread",
    )
    assert nodes_of(handle) == {zone_a.node_id, zone_b.node_id}
    url = serve.list_proxies()[0].url + "/spread"
    outcomes: list[int] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                outcomes.append(requests.get(url, headers={H: "m"}, timeout=30).status_code)
            except requests.RequestException:
                outcomes.append(-1)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_until(lambda: len(outcomes) >= 5, timeout=30, message="the client got no answers")
        cluster.remove_node(zone_b)
        # Both replicas end up on the node that remains.
        wait_until(
            lambda: nodes_of(handle, 10) == {zone_a.node_id}
            and len({handle.remote().result()["node"] for _ in range(10)}) == 1,
            timeout=60,
            message="no replica came back on the remaining node",
        )
        served_before = len(outcomes)
        wait_until(lambda: len(outcomes) > served_before + 20, timeout=30)
    finally:
        stop.set()
        thread.join(30)
    failures = [code for code in outcomes if code != 200]
    assert len(failures) <= 2, failures  # at most the requests in flight on the lost node
    assert outcomes[-20:] == [200] * 20


def test_every_node_proxy_serves_grpc_on_a_port_it_reports(cluster, tmp_path):
    """gRPC on every proxy: with port 0 each node proxy picks its own and list_proxies says
    which; each answers Ray's health probe and routes an RPC to a replica."""
    import grpc

    from ..grpc_protos import compile_proto

    pb2, pb2_grpc = compile_proto(tmp_path / "protos")
    serve.start(
        http_options={"port": 0}, cluster="ray", proxy_location="every_node",
        grpc_options={"port": 0, "grpc_servicer_functions": [
            "inference_pb2_grpc.add_InferenceServicer_to_server"]},
    )
    try:
        serve.run(Answers.bind(), name="answers", route_prefix="/answers")
        proxies = serve.list_proxies()
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert {p.node_id for p in proxies} == alive and all(p.grpc_port for p in proxies)
        for proxy in proxies:
            with grpc.insecure_channel(f"{proxy.host}:{proxy.grpc_port}") as channel:
                healthz = channel.unary_unary(
                    "/ray.serve.RayServeAPIService/Healthz", request_serializer=bytes,
                    response_deserializer=pb2.Health.FromString,
                )
                assert healthz(b"", timeout=30).message == "success"
                reply = pb2_grpc.InferenceStub(channel).Infer(
                    pb2.InferRequest(text="hi"), timeout=30,
                    metadata=(("application", "answers"), ("multiplexed_model_id", "m1")),
                )
                assert (reply.text, reply.model) == ("hi", "m1")
    finally:
        serve.shutdown()


@serve.deployment
class Answers:
    async def Infer(self, request):
        import inference_pb2

        return inference_pb2.InferReply(text=request.text, model=serve.get_multiplexed_model_id())
