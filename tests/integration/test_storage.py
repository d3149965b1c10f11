"""The disk tier against real stores: a moto S3 server (``bench.s3_server``, in a process of
its own), an HTTP server, local files, real replica processes. Downloads are counted on the
server side: a download is a GET from byte 0."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

import modelplex as serve
from bench.s3_server import CREDENTIALS
from modelplex._storage import disk_cache as _disk_cache, node as _node_storage
from modelplex._storage import stores as _stores

from ..conftest import ROOT, wait_until
from .stores import HTTPStore

H = "serve_multiplexed_model_id"


@pytest.fixture
def s3(moto_server):
    """The session's moto server, its counts at 0 (the environment does not point at it:
    ``s3.options`` does)."""
    moto_server.reset()
    return moto_server


@pytest.fixture
def http_store():
    server = HTTPStore()
    yield server
    server.stop()


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A fresh node cache for this test, for this process and the replicas it starts."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("MODELPLEX_CACHE_DIR", str(directory))
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    _node_storage.reset()
    yield directory
    _node_storage.reset()


def data_files(directory) -> list[str]:
    return sorted(os.listdir(directory / "data")) if (directory / "data").exists() else []


def test_plain_and_file_paths(cache_dir, tmp_path):
    (tmp_path / "w.bin").write_bytes(b"w" * 1000)
    (tmp_path / "m" / "sub").mkdir(parents=True)
    (tmp_path / "m" / "a.txt").write_text("a")
    (tmp_path / "m" / "sub" / "b.txt").write_text("bb")
    path = serve.fetch(str(tmp_path / "w.bin"))
    assert open(path, "rb").read() == b"w" * 1000
    assert path.startswith(str(cache_dir))
    assert serve.fetch(f"file://{tmp_path}/w.bin") == path  # one artifact, two spellings
    folder = serve.fetch(f"{tmp_path}/m/")
    assert sorted(os.listdir(folder)) == ["a.txt", "sub"]
    assert open(os.path.join(folder, "sub", "b.txt")).read() == "bb"
    [a, b] = serve.list_artifacts()
    assert (a.kind, a.size_bytes, a.held) == ("file", 1000, False)
    assert (b.kind, b.size_bytes) == ("directory", 3)
    with pytest.raises(serve.ModelNotFoundError) as info:
        serve.fetch(str(tmp_path / "missing.bin"))
    assert isinstance(info.value, FileNotFoundError)


async def test_s3_file_and_prefix_download_once(cache_dir, s3):
    s3.put("models", {"t1/w.bin": b"x" * 4096})
    s3.put("models", {"t1/dir/config.json": b"{}"})
    s3.put("models", {"t1/dir/weights/0.bin": b"0" * 100})
    path = await serve.fetch("s3://models/t1/w.bin", storage_options=s3.options)
    assert open(path, "rb").read() == b"x" * 4096
    folder = await serve.fetch("s3://models/t1/dir/", storage_options=s3.options)
    assert open(os.path.join(folder, "weights", "0.bin"), "rb").read() == b"0" * 100
    # Again (validated with a HEAD/list each time): nothing is downloaded a second time.
    assert await serve.fetch("s3://models/t1/w.bin", storage_options=s3.options) == path
    assert await serve.fetch("s3://models/t1/dir/", storage_options=s3.options) == folder
    assert s3.of("models/t1/w.bin").downloads == 1 and s3.of("models/t1/dir/config.json").downloads == 1


async def test_etag_change_downloads_again_and_validate_interval_trusts_the_copy(cache_dir, s3):
    s3.put("models", {"t2/w.bin": b"one"})
    uri = "s3://models/t2/w.bin"
    path = await serve.fetch(uri, storage_options=s3.options)
    s3.put("models", {"t2/w.bin": b"two!"})
    # Within the validation interval the copy is trusted without asking the store.
    assert open(await serve.fetch(uri, storage_options=s3.options, validate=60), "rb").read() == b"one"
    assert open(await serve.fetch(uri, storage_options=s3.options), "rb").read() == b"two!"
    assert s3.of("models/t2/w.bin").downloads == 2
    assert await serve.fetch(uri, storage_options=s3.options) == path


FETCH_ONE = """
import os, sys, time
import modelplex as serve
while not os.path.exists(sys.argv[1]):
    time.sleep(0.005)
options = {"endpoint_url": sys.argv[3]} if sys.argv[3] else None
path = serve.fetch(sys.argv[2], storage_options=options)
print(os.path.getsize(path))
"""


def test_ten_processes_download_once(cache_dir, s3, tmp_path):
    s3.put("models", {"t3/big.bin": os.urandom(3 << 20)})
    go = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FETCH_ONE, str(go), "s3://models/t3/big.bin", s3.endpoint],
            env=env, stdout=subprocess.PIPE, text=True,
        )
        for _ in range(10)
    ]
    time.sleep(1.0)  # let them all import and wait at the line
    go.touch()
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert outputs == [str(3 << 20)] * 10
    assert s3.of("models/t3/big.bin").downloads == 1
    assert len(data_files(cache_dir)) == 1


def test_a_killed_download_leaves_nothing_that_is_served(cache_dir, http_store):
    data = os.urandom(2 << 20)
    http_store.files["/big.bin"] = data
    http_store.trickle_s = 0.02  # 32 chunks of 64 KiB: about 0.7 s
    proc = subprocess.Popen(
        [sys.executable, "-c", FETCH_ONE, "/", http_store.url + "/big.bin", ""],
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    tmp = cache_dir / "tmp"
    wait_until(lambda: tmp.exists() and any(f.stat().st_size > 0 for f in tmp.iterdir()))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert data_files(cache_dir) == [] and not list((cache_dir / "meta").iterdir())
    http_store.trickle_s = 0.0
    path = serve.fetch(http_store.url + "/big.bin")
    assert open(path, "rb").read() == data  # whole, not the partial file
    assert [f.name for f in tmp.iterdir()] == []  # the dead download's file was cleaned up


async def test_denied_is_403_and_never_logs_credentials(cache_dir, http_store, caplog):
    http_store.deny.add("/secret.bin")
    uri = http_store.url.replace("http://", "http://user:hunter2@") + "/secret.bin?token=s3cr3t"
    with pytest.raises(serve.StorageAccessDeniedError) as info:
        await serve.fetch(uri)
    assert isinstance(info.value, PermissionError)
    text = str(info.value) + caplog.text
    assert "403" in str(info.value) and "hunter2" not in text and "s3cr3t" not in text


async def test_unreachable_is_503_after_the_deadline_unless_a_copy_may_serve(cache_dir, http_store):
    http_store.files["/w.bin"] = b"w" * 10
    url = http_store.url + "/w.bin"
    path = await serve.fetch(url)
    http_store.stop()
    start = time.monotonic()
    with pytest.raises(serve.StorageUnavailableError) as info:
        await serve.fetch(url, deadline_s=1.0, offline_ok=False)
    assert 0.9 < time.monotonic() - start < 3.0
    assert info.value.attempts >= 2 and info.value.http_status == 503
    assert await serve.fetch(url, deadline_s=0.5, offline_ok=True) == path  # the disk copy serves
    with pytest.raises(serve.StorageUnavailableError):  # nothing on disk: nothing to serve
        await serve.fetch(http_store.url + "/other.bin", deadline_s=0.5)


async def test_full_disk_is_507_and_the_cache_recovers(cache_dir, s3, monkeypatch):
    s3.put("models", {"t4/w.bin": b"w" * 2000})
    real_copy = _disk_cache._copy
    full = [True]

    async def copy(store, obj, tmp, progress):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        await real_copy(store, obj, tmp, progress)

    monkeypatch.setattr(_disk_cache, "_copy", copy)
    with pytest.raises(serve.DiskCacheFullError) as info:
        await serve.fetch("s3://models/t4/w.bin", storage_options=s3.options)
    assert info.value.http_status == 507 and info.value.errno == errno.ENOSPC
    assert data_files(cache_dir) == [] and os.listdir(cache_dir / "tmp") == []
    full[0] = False  # space was freed
    path = await serve.fetch("s3://models/t4/w.bin", storage_options=s3.options)
    assert open(path, "rb").read() == b"w" * 2000


async def test_byte_budget_evicts_least_recently_used_unheld(cache_dir, s3, monkeypatch):
    monkeypatch.setenv("MODELPLEX_CACHE_MAX_BYTES", "2500")
    _node_storage.reset()
    for name in ("a", "b", "c"):
        s3.put("models", {f"t5/{name}.bin": name.encode() * 1000})
    with pytest.raises(serve.DiskCacheFullError):  # bigger than the whole budget
        s3.put("models", {"t5/huge.bin": b"h" * 3000})
        await serve.fetch("s3://models/t5/huge.bin", storage_options=s3.options)
    await serve.fetch("s3://models/t5/a.bin", storage_options=s3.options)
    await serve.fetch("s3://models/t5/b.bin", storage_options=s3.options)
    await serve.fetch("s3://models/t5/a.bin", storage_options=s3.options)  # b is now the LRU
    await serve.fetch("s3://models/t5/c.bin", storage_options=s3.options)
    assert sorted(a.uri for a in serve.list_artifacts()) == [
        "s3://models/t5/a.bin", "s3://models/t5/c.bin"
    ]


def make_fetcher(capacity: int = 1):
    @serve.deployment
    class Fetcher:
        def __init__(self, options: dict, uris: dict) -> None:
            self.options = options
            self.uris = uris

        @serve.multiplexed(max_num_models_per_replica=capacity)
        async def get_model(self, model_id: str) -> bytes:
            uri = self.uris.get(model_id, f"s3://models/dep/{model_id}.bin")
            options = self.options if uri.startswith("s3://") else None
            path = await serve.fetch(uri, storage_options=options, deadline_s=1.0)
            with open(path, "rb") as f:
                return f.read()

        async def __call__(self, request) -> dict:
            model = await self.get_model(serve.get_multiplexed_model_id())
            return {"bytes": len(model)}

    return Fetcher


def loaded() -> list[str]:
    return sorted(s.model_id for s in serve.list_models() if s.state == "loaded")


def test_through_a_deployment(cache_dir, s3, http_store, serve_instance):
    """Errors reach HTTP clients with their status and evict nothing; a model evicted from
    memory comes back from disk; a disk-only preload takes no memory slot."""
    for name in ("a", "b", "w"):
        s3.put("models", {f"dep/{name}.bin": name.encode() * 100})
    http_store.deny.add("/denied.bin")
    uris = {"denied": http_store.url + "/denied.bin", "down": "http://127.0.0.1:9/down.bin"}
    serve.run(make_fetcher(capacity=1).bind(s3.options, uris))
    get = lambda m: requests.get(serve_instance.url, headers={H: m})  # noqa: E731

    assert get("a").json() == {"bytes": 100}
    for model_id, status in [("nope", 404), ("denied", 403), ("down", 503)]:
        response = get(model_id)
        assert response.status_code == status, response.text
        assert f"model '{model_id}'" in response.text
    assert "s3://models/dep/nope.bin" in get("nope").text
    assert loaded() == ["a"]  # no failure evicted the loaded model

    assert get("b").json() == {"bytes": 100}  # evicts a from memory, not from disk
    assert get("a").json() == {"bytes": 100}
    assert s3.of("models/dep/a.bin").downloads == 1

    held = {a.uri: a.held for a in serve.list_artifacts()}
    assert held == {"s3://models/dep/a.bin": True, "s3://models/dep/b.bin": False}

    assert len(serve.preload_model("w", disk_only=True)) == 1
    assert loaded() == ["a"]  # no memory slot taken
    assert s3.of("models/dep/w.bin").downloads == 1
    r = requests.post(serve_instance.url + "/-/models/preload", json={"model_id": "b", "disk_only": True})
    assert r.status_code == 200 and loaded() == ["a"]
    listing = requests.get(serve_instance.url + "/-/artifacts").json()
    assert {a["uri"]: a["held"] for a in listing}["s3://models/dep/w.bin"] is False
    assert get("w").json() == {"bytes": 100}
    assert s3.of("models/dep/w.bin").downloads == 1  # the memory load came from disk
    wait_until(lambda: {a.uri: a.held for a in serve.list_artifacts()}["s3://models/dep/a.bin"] is False)


async def test_a_copy_on_disk_costs_one_head_and_no_new_client(cache_dir, s3):
    """Fetches on one loop share one filesystem: building an S3 client (botocore's service
    model, an SSL context) costs far more than the HEAD that checks the copy."""
    s3.put("models", {"t6/w.bin": b"w" * 1000})
    uri = "s3://models/t6/w.bin"
    built = _stores.filesystems.built
    path = await serve.fetch(uri, storage_options=s3.options)
    for _ in range(5):
        assert await serve.fetch(uri, storage_options=s3.options) == path
    assert _stores.filesystems.built == built + 1
    stats = s3.of("models/t6/w.bin")
    assert (stats.downloads, stats.heads) == (1, 6)  # one HEAD per fetch (validate="always")
    # Other storage options are another filesystem; a sync fetch runs on a loop of its own,
    # which builds one and closes it as the loop ends.
    await serve.fetch(uri, storage_options={**s3.options, "use_ssl": False})
    assert _stores.filesystems.built == built + 2
    assert await asyncio.to_thread(serve.fetch, uri, storage_options=s3.options) == path
    assert _stores.filesystems.built == built + 3
    assert s3.of("models/t6/w.bin").downloads == 1


async def test_an_object_uploaded_in_parts_is_downloaded_once(cache_dir, s3):
    data = os.urandom(11 << 20)
    s3.put("models", {"t7/parts.bin": data}, part_size=5 << 20)
    etag = s3.client().head_object(Bucket="models", Key="t7/parts.bin")["ETag"]
    assert etag.endswith('-3"')  # not the content's MD5: the size is what can be checked
    # Left to itself, s3fs reads an object over its block size (50 MB) with a whole GET it
    # drops, then in ranged parts: a small block size puts this object on that path.
    options = {**s3.options, "default_block_size": 1 << 20}
    path = await serve.fetch("s3://models/t7/parts.bin", storage_options=options)
    assert open(path, "rb").read() == data
    stats = s3.of("models/t7/parts.bin")
    assert (stats.downloads, stats.gets, stats.bytes_sent) == (1, 1, len(data))
