"""gRPC through the proxy with the real grpcio client and a ``.proto`` compiled at test time: the
RPC's method runs with its request message and ``grpc_context``; ``multiplexed_model_id``
routes to a holder; server streams come chunk by chunk; errors are Ray's status codes; Ray's
built-in service answers health probes. One instance serves the module."""

from __future__ import annotations

import os
import re
import threading
import time

import grpc
import pytest
import requests

import modelplex as serve

from ..conftest import free_port, wait_until
from ..grpc_protos import compile_proto

SERVICER = "inference_pb2_grpc.add_InferenceServicer_to_server"
TIMEOUT_S = 3.0  # grpc_options.request_timeout_s


@serve.deployment(num_replicas=2)
class Inference:
    def __init__(self, flags: str) -> None:
        self.flags = flags

    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> str:
        return f"model-{model_id}"

    async def Infer(self, request, grpc_context):
        import inference_pb2

        model = await self.get_model(serve.get_multiplexed_model_id())
        grpc_context.set_trailing_metadata([("served-by", str(os.getpid()))])
        return inference_pb2.InferReply(
            model=model, text=request.text, pid=os.getpid(),
            request_id=serve.get_multiplexed_model_id() and grpc_context.request_id() or "",
        )

    async def Stream(self, request):
        """Yields one reply, then waits for the test's go-ahead before each next one."""
        import asyncio

        import inference_pb2

        try:
            for i in range(request.count):
                if i:
                    while not os.path.exists(f"{self.flags}/{request.text}-{i}"):
                        await asyncio.sleep(0.01)
                yield inference_pb2.InferReply(text=f"{request.text}-{i}")
        finally:
            open(f"{self.flags}/{request.text}-closed", "w").close()

    def Fail(self, request, grpc_context):
        import inference_pb2

        if request.text == "code":
            grpc_context.set_code(grpc.StatusCode.PERMISSION_DENIED)
            grpc_context.set_details("not yours")
            return inference_pb2.InferReply()
        if request.text == "code-then-raise":
            grpc_context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
            raise RuntimeError("precondition failed")
        raise ValueError(f"cannot infer {request.text!r}")


@serve.deployment(max_ongoing_requests=1, max_queued_requests=0)
class Busy:
    def __init__(self, flags: str) -> None:
        self.flags = flags

    async def Infer(self, request):
        import asyncio

        import inference_pb2

        open(f"{self.flags}/{request.text}-started", "w").close()
        try:
            while not os.path.exists(f"{self.flags}/{request.text}"):
                await asyncio.sleep(0.01)
        finally:
            open(f"{self.flags}/{request.text}-ended", "w").close()
        return inference_pb2.InferReply(text="done")


@pytest.fixture(scope="module")
def grpc_serve(tmp_path_factory, cluster_options):
    out = tmp_path_factory.mktemp("protos")
    pb2, pb2_grpc = compile_proto(out)
    flags = str(tmp_path_factory.mktemp("flags"))
    serve.start(http_options={"port": 0}, grpc_options={
        "port": 0, "grpc_servicer_functions": [SERVICER], "request_timeout_s": TIMEOUT_S,
    }, **cluster_options)
    serve.run(Inference.bind(flags), name="infer", route_prefix="/infer")
    serve.run(Busy.bind(flags), name="busy", route_prefix="/busy")
    proxy = serve.list_proxies()[0]
    channel = grpc.insecure_channel(f"127.0.0.1:{proxy.grpc_port}")
    try:
        yield pb2, pb2_grpc.InferenceStub(channel), channel, flags, proxy
    finally:
        channel.close()
        serve.shutdown()


def app(name: str, **more: str) -> list[tuple[str, str]]:
    return [("application", name), *more.items()]


def test_a_unary_call_runs_the_method_of_its_name_on_a_holder_of_its_model(grpc_serve):
    pb2, stub, _, _, _ = grpc_serve
    reply, call = stub.Infer.with_call(
        pb2.InferRequest(text="hi"),
        metadata=app("infer", multiplexed_model_id="m1", request_id="req-42"),
    )
    assert (reply.model, reply.text, reply.request_id) == ("model-m1", "hi", "req-42")
    trailing = dict(call.trailing_metadata())
    assert trailing == {"request_id": "req-42", "served-by": str(reply.pid)}
    # Every call for m1 goes to the replica that holds it; without a request id one is made.
    pids = set()
    for _ in range(6):
        again, call = stub.Infer.with_call(
            pb2.InferRequest(text="x"), metadata=app("infer", multiplexed_model_id="m1"))
        pids.add(again.pid)
        assert re.fullmatch(r"[0-9a-f]{10}", dict(call.trailing_metadata())["request_id"])
    assert pids == {reply.pid}


def test_a_server_stream_arrives_chunk_by_chunk_and_a_cancel_closes_the_generator(grpc_serve):
    pb2, stub, _, flags, _ = grpc_serve
    replies = stub.Stream(pb2.InferRequest(text="s", count=3), metadata=app("infer"))
    got = []
    for reply in replies:  # the generator yields the next only once the test saw this one
        got.append(reply.text)
        open(f"{flags}/s-{len(got)}", "w").close()
    assert got == ["s-0", "s-1", "s-2"]
    # A client that cancels mid-stream: the generator's finally runs at the replica.
    cancelled = stub.Stream(pb2.InferRequest(text="c", count=5), metadata=app("infer"))
    assert next(cancelled).text == "c-0"
    cancelled.cancel()
    wait_until(lambda: os.path.exists(f"{flags}/c-closed"), timeout=10)
    assert cancelled.code() == grpc.StatusCode.CANCELLED


def test_errors_are_ray_s_status_codes(grpc_serve):
    pb2, stub, _, flags, _ = grpc_serve

    def status(method, text="", metadata=None, **kwargs):
        with pytest.raises(grpc.RpcError) as info:
            method(pb2.InferRequest(text=text), metadata=metadata, **kwargs)
        return info.value.code(), info.value.details()

    assert status(stub.Infer) == (grpc.StatusCode.NOT_FOUND, (
        "Application metadata not set. Ping /ray.serve.RayServeAPIService/ListApplications "
        "for available applications."))
    code, details = status(stub.Infer, metadata=app("nope"))
    assert code == grpc.StatusCode.NOT_FOUND and details.startswith("Application 'nope' not found.")
    assert status(stub.Fail, "x", app("infer")) == (
        grpc.StatusCode.INTERNAL, "cannot infer 'x'")
    assert status(stub.Fail, "code", app("infer")) == (
        grpc.StatusCode.PERMISSION_DENIED, "not yours")
    assert status(stub.Fail, "code-then-raise", app("infer")) == (
        grpc.StatusCode.FAILED_PRECONDITION, "precondition failed")
    code, details = status(stub.Missing, metadata=app("infer"))
    assert code == grpc.StatusCode.UNIMPLEMENTED and "no method 'Missing'" in details
    code, _ = status(stub.Infer, metadata=app("infer", multiplexed_model_id="m" * 2000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # Past request_timeout_s: DEADLINE_EXCEEDED, and the method is cancelled at the replica.
    started = time.monotonic()
    code, details = status(stub.Infer, "slow", app("busy"))
    assert (code, details) == (grpc.StatusCode.DEADLINE_EXCEEDED, f"Request timed out after {TIMEOUT_S}s.")
    assert time.monotonic() - started < TIMEOUT_S + 2
    wait_until(lambda: os.path.exists(f"{flags}/slow-ended"), timeout=10)
    # A full deployment (one running, no queue): RESOURCE_EXHAUSTED at once.
    first = stub.Infer.future(pb2.InferRequest(text="hold"), metadata=app("busy"))
    # It runs (its replica says so), not only counted: the routers' reports lag behind.
    wait_until(lambda: os.path.exists(f"{flags}/hold-started") or first.done(), timeout=10)
    code, details = status(stub.Infer, "second", app("busy"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_queued_requests" in details
    open(f"{flags}/hold", "w").close()
    assert first.result(timeout=10).text == "done"


def test_ray_s_built_in_service_answers_health_probes(grpc_serve):
    pb2, _, channel, _, _ = grpc_serve
    healthz = channel.unary_unary("/ray.serve.RayServeAPIService/Healthz",
                                  request_serializer=bytes, response_deserializer=pb2.Health.FromString)
    assert healthz(b"").message == "success"
    listing = channel.unary_unary("/ray.serve.RayServeAPIService/ListApplications",
                                  request_serializer=bytes,
                                  response_deserializer=pb2.ApplicationNames.FromString)
    assert sorted(listing(b"").application_names) == ["busy", "infer"]


def test_reflection_lists_the_user_s_services(grpc_serve):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    _, _, channel, _, _ = grpc_serve
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    [answer] = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in answer.list_services_response.service}
    assert "modelplex.test.Inference" in names


def test_calls_are_access_logged_and_counted_under_ray_s_metric_names(grpc_serve):
    pb2, stub, _, _, proxy = grpc_serve
    stub.Infer(pb2.InferRequest(text="m"), metadata=app("infer", multiplexed_model_id="m2"))
    from modelplex._driver.runtime import current_runtime

    log = os.path.join(current_runtime().log_dir, "proxy.log")

    def logged():
        with open(log) as f:
            return [line for line in f if "/modelplex.test.Inference/Infer infer OK" in line]

    assert wait_until(logged, timeout=10)

    def counted():
        text = requests.get(f"{proxy.url}/-/metrics", timeout=10).text
        return re.search(r'modelplex_num_grpc_requests_total\{application="infer",'
                         r'method="/modelplex.test.Inference/Infer",route="infer",'
                         r'status_code="OK"\} [1-9]', text) and text
    text = wait_until(counted, timeout=10)
    assert 'modelplex_num_grpc_error_requests_total{application="infer"' in text
    assert "modelplex_grpc_request_latency_ms_bucket" in text


def test_status_has_ray_s_fields(grpc_serve):
    status = serve.status()
    app = status.applications["infer"]
    assert app.message == "" and time.time() - 600 < app.last_deployed_time_s <= time.time()
    deployment = app.deployments["Inference"]
    assert deployment.replica_states == {"RUNNING": 2} and deployment.message == ""
    assert status.proxies == {serve.list_proxies()[0].node_id: "HEALTHY"}


def test_a_grpc_port_in_use_is_a_clear_error(grpc_serve):
    _, _, _, _, proxy = grpc_serve
    from modelplex._driver.runtime import Runtime
    from modelplex._config import HTTPOptions, gRPCOptions

    with pytest.raises(serve.PortInUseError) as info:
        Runtime(HTTPOptions(port=free_port()), grpc_options=gRPCOptions(
            port=proxy.grpc_port, grpc_servicer_functions=(SERVICER,)))
    assert info.value.option == "grpc_options" and f"Port {proxy.grpc_port}" in str(info.value)
    assert "grpc_options={'port': ...}" in str(info.value)


def test_a_node_proxy_serves_grpc_too(grpc_serve):
    """What runs on each other node of a Ray cluster (``proxy_location="every_node"``), here in
    this process beside the driver's: its own routers, the same gRPC service."""
    from modelplex._config import HTTPOptions
    from modelplex._data.routers import current_registry, install_registry
    from modelplex._driver.runtime import current_runtime
    from modelplex._http.node_proxy import NodeProxy
    from modelplex._specs import ProxySpec

    pb2, _, _, _, _ = grpc_serve
    runtime = current_runtime()
    spec = ProxySpec(runtime.controller.address, runtime._secret, HTTPOptions(port=0),
                     grpc_options=runtime.grpc_options)
    node, driver_registry = NodeProxy(spec), current_registry()
    try:
        node.start()
        assert node.grpc_port not in (None, runtime.proxies[0].grpc_port)
        with grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}") as channel:
            import inference_pb2_grpc

            reply = inference_pb2_grpc.InferenceStub(channel).Infer(
                pb2.InferRequest(text="far"), metadata=app("infer", multiplexed_model_id="m1"))
        assert (reply.model, reply.text) == ("model-m1", "far")
    finally:
        node.stop()
        install_registry(driver_registry)
