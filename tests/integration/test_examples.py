"""The examples and the README's code run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict

import requests

import modelplex as serve

from ..conftest import free_port
from .test_batch import post_many

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "examples"))

from batched_embeddings import app as embeddings_app  # noqa: E402
from composition import app as composition_app  # noqa: E402
from inferencer import ModelInferencer  # noqa: E402
from make_models import make_models  # noqa: E402


def test_seed_model_inferencer_over_local_files(serve_instance, tmp_path):
    root = make_models(tmp_path / "bucket", count=4, dim=8)
    serve.run(ModelInferencer.bind(str(root)))
    outputs = {}
    for model_id in ["1", "2", "3", "4", "1"]:
        resp = requests.get(serve_instance.url, headers={"serve_multiplexed_model_id": model_id})
        assert resp.status_code == 200, resp.text
        assert resp.json()["model_id"] == model_id
        outputs.setdefault(model_id, resp.json()["output"])
        assert resp.json()["output"] == outputs[model_id]
    assert len(set(outputs.values())) == 4  # four different weight files


def test_model_ids_cannot_escape_the_model_root(serve_instance, tmp_path):
    root = make_models(tmp_path / "bucket", count=1, dim=4)
    secret = tmp_path / "secret" / "model.npy"
    secret.parent.mkdir()
    secret.write_bytes((root / "1" / "model.npy").read_bytes())
    serve.run(ModelInferencer.bind(str(root)))
    for bad in ["../secret", "../../etc/passwd", str(tmp_path / "secret"), "1/../../secret"]:
        resp = requests.get(serve_instance.url, headers={"serve_multiplexed_model_id": bad})
        assert resp.status_code == 500 and "outside the model root" in resp.text, (bad, resp.text)
    resp = requests.get(serve_instance.url, headers={"serve_multiplexed_model_id": "9"})
    assert resp.status_code == 500 and "no model '9'" in resp.text


def test_seed_composition(serve_instance):
    serve.run(composition_app)
    assert requests.get(serve_instance.url).text == "bar"


def test_demo_runs_once():
    port = free_port()
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "demo.py"), "--once", "--port", str(port)],
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("HTTP 200") == 8
    assert "Loading model '1'." in out.stderr
    assert "Unloading model '" in out.stderr  # seven models, six slots: the README promises it


def test_readme_example_runs(serve_instance):
    text = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    namespace: dict = {"__name__": "readme"}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    resp = requests.get(
        serve_instance.url, headers={"serve_multiplexed_model_id": "1"}, json={"x": 2}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"model": "1", "prediction": 2}


def test_multiplexing_doc_example_runs(serve_instance, capsys):
    text = open(os.path.join(ROOT, "docs", "multiplexing.md")).read()
    managing, _tenants = re.findall(r"```python\n(.*?)```", text, re.S)  # tenants: test_tenants
    exec(compile(managing, "docs/multiplexing.md", "exec"), {"__name__": "docs"})
    printed = capsys.readouterr().out
    assert "en loaded True" in printed and "de loaded False" in printed
    names = {s.model_id for s in serve.list_models()}
    assert names == {"en"}


def test_batched_embeddings_example(serve_instance):
    serve.run(embeddings_app)
    pairs = [(m, f"text {i}") for i in range(8) for m in ("en", "de")]
    answers = post_many(serve_instance.url, pairs, as_body=True)
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    batches = defaultdict(list)
    for (model_id, _), r in zip(pairs, answers):
        body = r.json()
        assert body["model_id"] == model_id and len(body["embedding"]) == 16
        batches[body["batch"]].append(body)
    for members in batches.values():
        assert len({b["model_id"] for b in members}) == 1  # no batch mixes models
        assert {b["batch_size"] for b in members} == {len(members)}
    assert max(len(m) for m in batches.values()) > 1  # concurrent requests shared a batch
    again = requests.get(serve_instance.url, data="text 0",
                         headers={"serve_multiplexed_model_id": "en"}, timeout=60)
    first = answers[pairs.index(("en", "text 0"))]
    assert again.json()["embedding"] == first.json()["embedding"]


def test_hardware_doc_example_runs(monkeypatch, capsys):
    """On a given inventory, so any machine runs it as a GPU box would."""
    for var in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    text = open(os.path.join(ROOT, "docs", "hardware.md")).read()
    block = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    start = serve.start  # the example's instance, on a free port rather than 8000
    monkeypatch.setattr(serve, "start", lambda **kw: start(http_options={"port": free_port()}, **kw))
    try:
        exec(compile(block, "docs/hardware.md", "exec"), {"__name__": "docs"})
    finally:
        serve.shutdown()
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["[(('0',), '0', '2'), (('1',), '1', '2')]", "{'CPU': 0.0, 'GPU': 0.0}"]
