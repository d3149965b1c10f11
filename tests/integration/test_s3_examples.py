"""The S3 examples against a real S3-compatible server (moto), with real replica processes.

The seed runs as written: aioboto3, ``torch.load`` of a whole module, ``model.forward`` on
``torch.rand(64, 3, 512, 512)``, its tensor answered as JSON. The server counts downloads per
object; the replicas' log files show the loads and unloads.
The seed's code downloads a model again after it was evicted; ``serve.fetch`` reloads it from
the node's disk cache.
"""

from __future__ import annotations

import os
import sys

import pytest
import requests

torch = pytest.importorskip("torch")

import modelplex as serve
from modelplex._driver import runtime as _runtime

from ..conftest import free_port, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import s3_fetch_inferencer  # noqa: E402
import s3_inferencer  # noqa: E402

pytestmark = pytest.mark.torch



@pytest.fixture
def url(s3):
    """serve.start after the ``s3`` fixture set the environment the replicas inherit."""
    port = free_port()
    serve.start(http_options={"port": port})
    yield f"http://127.0.0.1:{port}/"
    serve.shutdown()


def ask(url: str, model_id: str) -> list:
    resp = requests.get(url, headers={"serve_multiplexed_model_id": model_id}, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    return resp.json()


def logits_of(url: str, model_id: str) -> float:
    """The forward pass of 64 random images: 64 rows of 4 logits, each ``model_id`` (the
    model's scale) to within the noise of a 512x512 channel mean."""
    rows = ask(url, model_id)
    assert len(rows) == 64 and {len(row) for row in rows} == {4}
    assert all(abs(x - float(model_id)) < 0.01 for row in rows for x in row), rows[0]
    return rows[0][0]


def replica_log() -> str:
    log_dir = _runtime.current_runtime().log_dir
    return "".join(open(os.path.join(log_dir, f)).read() for f in sorted(os.listdir(log_dir)))


def downloads(s3) -> dict[str, int]:
    return {key.split("/")[1]: s.downloads for key, s in s3.stats().items() if s.downloads}


def run_one_replica_trace(url: str, module) -> None:
    """Models 1..4 on one replica of 3 slots, then 1 again: 1 was evicted by 4, and reloads."""
    serve.run(module.ModelInferencer.options(num_replicas=1).bind())
    for model_id in ["1", "2", "3", "4", "1"]:
        logits_of(url, model_id)
    wait_until(lambda: replica_log().count("Loading model") == 5, message=replica_log())
    log = replica_log()
    assert log.count("Loading model '1'.") == 2
    assert "Unloading model '1'." in log and "Unloading model '2'." in log


@pytest.fixture
def trusted(monkeypatch):
    """The seed's ``torch.load`` of whole modules, from a bucket we trust (torch >= 2.6)."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def test_seed_code_downloads_again_after_eviction(trusted, s3, url, tmp_path):
    run_one_replica_trace(url, s3_inferencer)
    assert downloads(s3) == {"1": 2, "2": 1, "3": 1, "4": 1}
    assert (tmp_path / "model_1.pt").is_file()  # where the seed puts it: the working directory


def test_fetch_reloads_from_disk_after_eviction(s3, url):
    run_one_replica_trace(url, s3_fetch_inferencer)
    assert downloads(s3) == {"1": 1, "2": 1, "3": 1, "4": 1}


def test_fetch_downloads_once_for_replicas_loading_at_once(s3, url):
    serve.run(s3_fetch_inferencer.ModelInferencer.options(num_replicas=2).bind())
    assert len(serve.preload_model("3", num_replicas=2)) == 2
    assert replica_log().count("Loading model '3'.") == 2
    assert downloads(s3) == {"3": 1}
    logits_of(url, "3")
