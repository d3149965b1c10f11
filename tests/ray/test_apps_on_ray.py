"""Issue-10 features again with replicas as Ray actors: streaming, batching by model, and the
deployment lifecycle. The tests are the local ones, imported (see test_core_on_ray.py)."""

from __future__ import annotations

from ..integration.test_batch import (  # noqa: F401
    test_batches_over_http_group_by_model_and_errors_reach_everyone,
)
from ..integration.test_lifecycle import (  # noqa: F401
    test_a_request_in_flight_finishes_before_a_redeploy_unloads_its_model,
    test_get_replica_context_names_the_replica,
    test_user_config_reaches_reconfigure_and_changes_in_place,
)
from ..integration.test_streaming import (  # noqa: F401
    streamer,
    test_a_client_that_goes_away_closes_the_generator_within_a_second,
    test_a_generator_that_raises_midway_ends_the_stream_where_the_client_sees_it,
    test_a_model_is_not_unloaded_under_an_open_stream,
    test_an_ingress_stream_is_closed_when_its_client_goes_away,
    test_handle_streams_with_for_outside_a_deployment,
    test_sse_chunks_arrive_as_they_are_produced,
    test_streams_between_deployments_with_async_for,
)


def test_the_openai_adapter_example_on_ray(serve_instance):
    from openai import OpenAI

    import modelplex as serve

    from ..integration.test_openai_example import app

    serve.run(app)
    client = OpenAI(base_url=f"{serve_instance.url}/v1", api_key="unused", max_retries=0)
    whole = client.completions.create(model="lora-poet", prompt="the sea", max_tokens=8)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="lora-poet", prompt="the sea", max_tokens=8, stream=True))
    assert streamed == whole.choices[0].text and len(streamed.split()) == 8
    assert [m.id for m in client.models.list()] == ["lora-poet"]
