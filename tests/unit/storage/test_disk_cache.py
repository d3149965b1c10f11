"""The node's disk cache in-process, over local ``file://`` stores: downloads once, checks
the store before reusing a copy, evicts what nobody holds, and names what goes wrong."""

from __future__ import annotations

import asyncio
import os

import pytest

from modelplex._errors import DiskCacheFullError, ModelNotFoundError
from modelplex._storage import disk_cache as disk_cache_module
from modelplex._storage.config import StorageConfig
from modelplex._storage.disk_cache import DiskCache
from modelplex._storage.stores import Store

from tests.fakes import FakeClock


@pytest.fixture
def copies(monkeypatch):
    """Every download the cache makes, by the store's label (the seam bytes are written by)."""
    made: list[str] = []
    real = disk_cache_module._copy

    async def counted(store, obj, tmp, progress):
        made.append(store.label)
        await real(store, obj, tmp, progress)

    monkeypatch.setattr(disk_cache_module, "_copy", counted)
    return made


def put(path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"file://{path}"


def make(tmp_path, **options) -> DiskCache:
    return DiskCache(StorageConfig(cache_dir=str(tmp_path / "cache"), **options), clock=FakeClock(1000.0, tick=1.0))


async def fetch(cache: DiskCache, uri: str, validate="always") -> tuple[str, str]:
    return await cache.fetch(Store(uri), validate=validate, offline_ok=True, deadline_s=1.0)


async def test_a_second_fetch_reuses_the_copy_on_disk(tmp_path, copies):
    cache = make(tmp_path)
    uri = put(tmp_path / "store" / "w.bin", b"weights")
    key, path = await fetch(cache, uri)
    assert open(path, "rb").read() == b"weights"
    assert await fetch(cache, uri) == (key, path)
    assert copies == [uri]  # checked against the store, not downloaded again
    [artifact] = cache.artifacts()
    assert (artifact.uri, artifact.kind, artifact.size_bytes, artifact.held) == (uri, "file", 7, False)


async def test_an_object_changed_in_the_store_is_downloaded_again(tmp_path, copies):
    cache = make(tmp_path)
    source = tmp_path / "store" / "w.bin"
    uri = put(source, b"v1")
    await fetch(cache, uri)
    put(source, b"version 2")
    os.utime(source, (2_000_000_000, 2_000_000_000))
    _, path = await fetch(cache, uri)
    assert open(path, "rb").read() == b"version 2"
    assert copies == [uri, uri]


async def test_a_copy_checked_recently_is_trusted_without_asking_the_store(tmp_path, copies):
    cache = make(tmp_path)
    source = tmp_path / "store" / "w.bin"
    uri = put(source, b"v1")
    await fetch(cache, uri, validate=60.0)
    source.unlink()  # the store would now say it is gone
    _, path = await fetch(cache, uri, validate=60.0)
    assert open(path, "rb").read() == b"v1" and copies == [uri]


async def test_concurrent_fetches_of_one_object_download_it_once(tmp_path, copies):
    cache = make(tmp_path)
    uri = put(tmp_path / "store" / "w.bin", b"x" * 4096)
    results = await asyncio.gather(*(fetch(cache, uri) for _ in range(8)))
    assert len(set(results)) == 1 and copies == [uri]


async def test_a_prefix_is_fetched_as_a_directory(tmp_path):
    cache = make(tmp_path)
    put(tmp_path / "store" / "adapter" / "config.json", b"{}")
    put(tmp_path / "store" / "adapter" / "weights" / "a.bin", b"abc")
    _, path = await fetch(cache, f"file://{tmp_path / 'store' / 'adapter'}/")
    assert sorted(os.listdir(path)) == ["config.json", "weights"]
    assert open(os.path.join(path, "weights", "a.bin"), "rb").read() == b"abc"
    [artifact] = cache.artifacts()
    assert artifact.kind == "directory" and artifact.size_bytes == 5


async def test_the_budget_evicts_the_least_recently_used_artifact_nobody_holds(tmp_path):
    cache = make(tmp_path, max_bytes=250)
    a = put(tmp_path / "store" / "a.bin", b"a" * 100)
    b = put(tmp_path / "store" / "b.bin", b"b" * 100)
    c = put(tmp_path / "store" / "c.bin", b"c" * 100)
    key_a, _ = await fetch(cache, a)
    await fetch(cache, b)
    cache.leases.hold("loader/a", key_a)  # a model loaded from a is in memory
    await fetch(cache, c)
    assert sorted(x.uri for x in cache.artifacts()) == sorted([a, c])  # b went, a is held
    assert {x.uri: x.held for x in cache.artifacts()} == {a: True, c: False}
    cache.leases.release("loader/a")
    assert not any(x.held for x in cache.artifacts())


async def test_an_object_larger_than_the_whole_budget_is_refused_by_name(tmp_path, copies):
    cache = make(tmp_path, max_bytes=10)
    uri = put(tmp_path / "store" / "big.bin", b"x" * 11)
    with pytest.raises(DiskCacheFullError, match="big.bin") as info:
        await fetch(cache, uri)
    assert "budget of 10 bytes" in str(info.value) and copies == []


async def test_a_missing_object_is_model_not_found(tmp_path):
    cache = make(tmp_path)
    with pytest.raises(ModelNotFoundError, match="nothing.bin"):
        await cache.fetch(
            Store(f"file://{tmp_path / 'nothing.bin'}"), validate="always", offline_ok=True,
            deadline_s=1.0, model_id="m1",
        )
    assert cache.artifacts() == []


async def test_what_a_dead_download_left_is_swept(tmp_path):
    cache = make(tmp_path)
    uri = put(tmp_path / "store" / "w.bin", b"w")
    key, _ = await fetch(cache, uri)
    leftover = os.path.join(cache.directory, "tmp", f"{key}.12345.deadbeef")
    orphan = os.path.join(cache.directory, "data", "0" * 40)
    for path in (leftover, orphan):
        with open(path, "wb") as f:
            f.write(b"partial")
    assert cache.make_room(0)
    assert not os.path.exists(leftover) and not os.path.exists(orphan)
    assert [x.uri for x in cache.artifacts()] == [uri]
