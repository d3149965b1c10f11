"""A gRPC method's context in the replica: Ray's ``RayServegRPCContext`` methods, and what
goes back to the proxy (codes by name, the request id first in the trailing metadata)."""

from __future__ import annotations

from modelplex._messages import Call, GRPCReply, GRPCRequest
from modelplex._replica.grpc_calls import RayServegRPCContext, grpc_kwargs, serialize

REQUEST = GRPCRequest(
    "/pkg.Svc/Infer",
    (("application", "app"), ("multiplexed_model_id", "m1"), ("request_id", "r-1"),
     ("traceparent", "00-ab-cd-01")),
    "ipv4:127.0.0.1:5000",
    "r-1",
)


class _Code:  # stands in for a grpc.StatusCode (an enum with a name)
    name = "NOT_FOUND"


def test_the_context_reads_the_call_s_metadata_like_ray_s():
    ctx = RayServegRPCContext(REQUEST)
    assert (ctx.application(), ctx.multiplexed_model_id(), ctx.request_id()) == ("app", "m1", "r-1")
    assert ctx.traceparent() == "00-ab-cd-01" and ctx.tracestate() is None
    assert ctx.peer() == "ipv4:127.0.0.1:5000"
    assert ("application", "app") in ctx.invocation_metadata()
    assert ctx.code() is None and ctx.details() == ""
    assert ctx.auth_context() == {"transport_security_type": [b"insecure"]}


def test_what_the_method_sets_goes_back_with_the_request_id_first():
    ctx = RayServegRPCContext(REQUEST)
    assert ctx.reply(b"body") == GRPCReply(b"body", "", "", (("request_id", "r-1"),))
    ctx.set_code(_Code())
    ctx.set_details("no such user")
    ctx.set_trailing_metadata([("x-user", "1")])
    ctx.set_trailing_metadata([("x-user", "2")])  # the last call wins, as in grpc
    assert ctx.reply(b"") == GRPCReply(
        b"", "NOT_FOUND", "no such user", (("request_id", "r-1"), ("x-user", "2")))


def test_grpc_context_is_passed_only_to_methods_that_declare_it():
    ctx = RayServegRPCContext(REQUEST)

    class D:
        def with_ctx(self, request, grpc_context): ...

        def without(self, request): ...

    assert grpc_kwargs(D().with_ctx, ctx) == {"grpc_context": ctx}
    assert grpc_kwargs(D().without, ctx) == {}


def test_responses_must_be_protobuf_messages():
    class Message:
        def SerializeToString(self) -> bytes:
            return b"\x08\x01"

    call = Call(1, "Infer")
    assert serialize(call, Message()) == b"\x08\x01"
    assert serialize(call, b"raw") == b"raw"
    try:
        serialize(call, {"not": "proto"})
    except TypeError as exc:
        assert "must return a protobuf message" in str(exc) and "dict" in str(exc)
    else:
        raise AssertionError("a dict is not a response")
