"""Shared fixtures of the integration tests: a real S3-compatible server (moto)."""

from __future__ import annotations

import io

import pytest

from bench.s3_server import S3Server


def module_bytes(scale: float) -> bytes:
    """A whole torch module as ``torch.save`` writes it (``examples/s3_inferencer.make_model``):
    what the seed's ``torch.load`` reads back."""
    import torch

    from s3_inferencer import make_model  # the examples folder is on sys.path (the test's)

    buf = io.BytesIO()
    torch.save(make_model(scale), buf)
    return buf.getvalue()


@pytest.fixture(scope="session")
def moto_server():
    """moto in server mode on a free port, in a process of its own, counting what it serves."""
    with S3Server() as server:
        yield server


@pytest.fixture
def s3(moto_server, monkeypatch, tmp_path):
    """The seed's bucket: ``my_bucket/<i>/model.pt`` for i in 1..4, each a classifier whose
    every logit is i on ``torch.rand`` images.

    The endpoint and fake keys go in the environment (replicas inherit it at start), the
    working directory and ``MODELPLEX_CACHE_DIR`` in ``tmp_path``, and the counts start at 0.
    """
    for key, value in moto_server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MODELPLEX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # the seed downloads into the working directory
    moto_server.put("my_bucket", {f"{i}/model.pt": module_bytes(float(i)) for i in range(1, 5)})
    moto_server.reset()
    return moto_server
