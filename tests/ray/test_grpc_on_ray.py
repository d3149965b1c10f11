"""gRPC again, with replicas as Ray actors: the local tests, imported; only the
``cluster_options`` fixture differs (see conftest.py)."""

from __future__ import annotations

from ..integration.test_grpc import (  # noqa: F401
    grpc_serve,
    test_a_server_stream_arrives_chunk_by_chunk_and_a_cancel_closes_the_generator,
    test_a_unary_call_runs_the_method_of_its_name_on_a_holder_of_its_model,
    test_errors_are_ray_s_status_codes,
    test_ray_s_built_in_service_answers_health_probes,
    test_status_has_ray_s_fields,
)
