"""Torch on the Ray backend: tensors as return values, the seed's torch ModelInferencer against
moto, and the peft adapter server through the openai client, with replicas as Ray actors."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

import ray  # noqa: E402
from openai import OpenAI  # noqa: E402

import modelplex as serve  # noqa: E402
from bench.s3_server import S3Server  # noqa: E402

from ..integration.conftest import module_bytes  # noqa: E402
from ..integration.test_peft_example import ADAPTERS, PROMPTS, STORE, Reference, streamed  # noqa: E402
from ..integration.test_s3_examples import logits_of, s3_inferencer  # noqa: E402
from ..integration.test_tensors import (  # noqa: E402,F401
    test_tensors_answer_json_over_http_whole_and_streamed,
    test_tensors_arrive_as_tensors_through_a_handle,
)
from .conftest import init_local_ray  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def moto():
    with S3Server() as server:
        yield server


@pytest.fixture(scope="module")
def local_ray(moto, tmp_path_factory):
    """Ray for this module, its workers pointed at moto (they take their environment from
    Ray, not from this process), the seed's whole-module ``torch.load`` allowed."""
    env = {**moto.env, "MODELPLEX_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
           "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    init_local_ray(runtime_env={"env_vars": env})
    yield ray
    ray.shutdown()


def test_the_seed_runs_as_written_on_ray(moto, serve_instance):
    moto.put("my_bucket", {f"{i}/model.pt": module_bytes(float(i)) for i in (1, 2)})
    serve.run(s3_inferencer.ModelInferencer.options(num_replicas=1).bind())
    for model_id in ("1", "2", "1"):
        logits_of(serve_instance.url + "/", model_id)
    loaded = {m.model_id for m in serve.list_models(deployment_name="ModelInferencer")}
    assert loaded == {"1", "2"}


def test_the_peft_adapter_server_on_ray(moto, serve_instance):
    import peft_lora  # the examples folder is on sys.path (test_peft_example put it there)

    peft_lora.publish_adapters(STORE, ADAPTERS[:6], **moto.options)
    serve.run(peft_lora.build(serve, serve.fetch, store=STORE, replicas=2,
                              adapters_per_replica=2, adapter_options={"num_cpus": 0.5},
                              ingress_options={"num_cpus": 0.5}))
    client = OpenAI(base_url=f"{serve_instance.url}/v1", api_key="unused", max_retries=0,
                    timeout=120)
    reference = Reference()
    jobs = [(a, PROMPTS[i % len(PROMPTS)], 6) for i, a in enumerate(ADAPTERS[:6] * 2)]
    answers = [streamed(client, *job) for job in jobs]
    assert answers == [reference(*job) for job in jobs]
    assert answers[0] != answers[1]  # two adapters
    whole = client.completions.create(model=ADAPTERS[0], prompt=jobs[0][1], max_tokens=6)
    assert whole.choices[0].text == answers[0]
    held = [m for m in serve.list_models("default", "Adapters") if m.state == "loaded"]
    assert len(held) <= 4
