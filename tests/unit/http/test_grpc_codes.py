"""The gRPC proxy's pure decisions: metadata, the application a call goes to, the status code an
error becomes (Ray's), and the built-in service's wire bytes."""

from __future__ import annotations

import asyncio

import pytest

from modelplex._errors import (
    BackPressureError,
    MethodNotFoundError,
    MissingModelIdError,
    ModelLoadTimeoutError,
    ReplicaDiedError,
    ReplicasNotReadyError,
    RequestTimeoutError,
)
from modelplex._http.grpc_codes import (
    MAX_DETAILS,
    Invocation,
    encode_healthz,
    encode_list_applications,
    pick_application,
    status_of,
)
from modelplex._messages import DeploymentID

A = DeploymentID("a", "Ingress")
B = DeploymentID("b", "Other")


def test_metadata_keys_are_ray_s_and_others_are_ignored():
    got = Invocation.parse([
        ("application", "a"), ("multiplexed_model_id", "m1"), ("request_id", "r-1"),
        ("session_id", "s"), ("user-agent", "grpc-python"), ("blob-bin", b"\x00"),
    ])
    assert got == Invocation("a", "m1", "r-1", "s")
    assert Invocation.parse(None) == Invocation()


def test_a_call_goes_to_its_application_or_to_the_only_one():
    one = {"/": ("a", A)}
    two = {"/": ("a", A), "/b": ("b", B)}
    assert pick_application(one, "") == ("a", A)
    assert pick_application(two, "b") == ("b", B)
    assert pick_application(two, "") == (
        "Application metadata not set. Ping /ray.serve.RayServeAPIService/ListApplications "
        "for available applications."
    )
    # Ray sends any name to a lone application; a name that does not exist is NOT_FOUND here.
    assert pick_application(one, "typo").startswith("Application 'typo' not found. Ping ")
    assert pick_application({}, "").startswith("Application metadata not set.")


@pytest.mark.parametrize("exc, code", [
    (RequestTimeoutError(2.0), "DEADLINE_EXCEEDED"),
    (asyncio.CancelledError(), "CANCELLED"),
    (BackPressureError("d", 5, 5), "RESOURCE_EXHAUSTED"),
    (ReplicaDiedError("r1", "connection lost"), "UNAVAILABLE"),
    (ReplicasNotReadyError("d", 1.0), "UNAVAILABLE"),
    (MissingModelIdError(), "INVALID_ARGUMENT"),
    (ModelLoadTimeoutError("m", 1.0), "DEADLINE_EXCEEDED"),
    (MethodNotFoundError("D", "Missing"), "UNIMPLEMENTED"),
    (ValueError("boom"), "INTERNAL"),
    (TimeoutError("the user's own"), "INTERNAL"),
])
def test_errors_become_ray_s_status_codes(exc, code):
    assert status_of(exc, 2.0, "r-1")[0] == code


def test_details_are_ray_s_messages_and_bounded():
    assert status_of(RequestTimeoutError(2.0), 2.0, "r") == (
        "DEADLINE_EXCEEDED", "Request timed out after 2.0s.")
    assert status_of(asyncio.CancelledError(), None, "r-9") == (
        "CANCELLED", "Client for request r-9 disconnected.")
    assert status_of(ValueError("boom"), None, "r") == ("INTERNAL", "boom")
    code, details = status_of(ValueError("x" * 10_000), None, "r")
    assert len(details) == MAX_DETAILS and details.endswith("... [truncated]")


def test_built_in_replies_are_the_protobuf_messages_ray_sends():
    # ListApplicationsResponse {repeated string application_names = 1}; HealthzResponse {string message = 1}
    assert encode_list_applications(["a", "bc"]) == b"\n\x01a\n\x02bc"
    assert encode_healthz("success") == b"\n\x07success"
    long = "x" * 300  # a length past one varint byte
    assert encode_healthz(long) == b"\n\xac\x02" + long.encode()
