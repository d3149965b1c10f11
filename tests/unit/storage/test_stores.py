"""The storage config, URI redaction, error classification and progress lines: no store needed."""

from __future__ import annotations

import errno
import logging
import os

import pytest

from modelplex._errors import error_response
from modelplex._storage.config import DEFAULT_CACHE_DIR, StorageConfig
from modelplex._storage.stores import Progress, Store, classify, redact, redact_text
import modelplex as serve


def test_config_defaults_and_environment():
    config = StorageConfig.from_env({})
    assert config == StorageConfig()
    assert config.cache_dir == DEFAULT_CACHE_DIR and config.max_bytes is None
    assert config.directory == os.path.expanduser(os.path.join("~", ".cache", "modelplex", "artifacts"))
    config = StorageConfig.from_env({
        "MODELPLEX_CACHE_DIR": "/srv/cache",
        "MODELPLEX_CACHE_MAX_BYTES": "1000",
        "MODELPLEX_CACHE_VALIDATE": "30",
        "MODELPLEX_CACHE_OFFLINE_OK": "0",
        "MODELPLEX_FETCH_DEADLINE_S": "2.5",
        "MODELPLEX_NODE_ID": "abc/def",
    })
    assert (config.max_bytes, config.validate, config.offline_ok, config.deadline_s) == (
        1000, 30.0, False, 2.5
    )
    assert config.directory == "/srv/cache/node-abc_def"  # one directory per Ray node


@pytest.mark.parametrize(
    "env, name",
    [
        ({"MODELPLEX_CACHE_MAX_BYTES": "lots"}, "MODELPLEX_CACHE_MAX_BYTES"),
        ({"MODELPLEX_CACHE_MAX_BYTES": "0"}, "max_bytes"),
        ({"MODELPLEX_CACHE_VALIDATE": "sometimes"}, "MODELPLEX_CACHE_VALIDATE"),
        ({"MODELPLEX_CACHE_VALIDATE": "-1"}, "validate"),
        ({"MODELPLEX_CACHE_OFFLINE_OK": "maybe"}, "MODELPLEX_CACHE_OFFLINE_OK"),
        ({"MODELPLEX_FETCH_DEADLINE_S": "inf"}, "deadline_s"),
    ],
)
def test_bad_settings_name_the_value(env, name):
    with pytest.raises(ValueError, match=name):
        StorageConfig.from_env(env)


def test_fetch_checks_its_arguments_before_any_io():
    with pytest.raises(TypeError, match="uri"):
        serve.fetch("")
    with pytest.raises(ValueError, match="validate"):
        serve.fetch("/x", validate="often")
    with pytest.raises(TypeError, match="offline_ok"):
        serve.fetch("/x", offline_ok="yes")
    with pytest.raises(ValueError, match="nosuchproto"):
        serve.fetch("nosuchproto://bucket/key")


def test_redact_strips_userinfo_and_query():
    assert redact("s3://bucket/model/w.bin") == "s3://bucket/model/w.bin"
    assert redact("https://user:pw@host:8443/m.bin?X-Amz-Signature=abc#f") == "https://host:8443/m.bin"
    assert redact("/plain/path") == "/plain/path"
    text = "Could not connect to https://k:s@h/b?token=t, then http://h2/x?sig=1"
    assert redact_text(text) == "Could not connect to https://h/b, then http://h2/x"


def test_cache_key_ignores_credentials_but_not_the_endpoint():
    a = Store("https://u:p@h/m.bin?sig=1").cache_key()
    assert a == Store("https://h/m.bin?sig=2").cache_key()
    assert Store("/tmp/x").cache_key() == Store("file:///tmp/x").cache_key()
    one = Store("s3://b/k", {"endpoint_url": "http://minio-1"}).cache_key()
    two = Store("s3://b/k", {"client_kwargs": {"endpoint_url": "http://minio-2"}}).cache_key()
    assert one != two


class Status(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.status = status


def wrapped(inner: BaseException, outer: BaseException) -> BaseException:
    try:
        raise outer from inner
    except BaseException as exc:
        return exc


class EndpointConnectionError(Exception):
    """Named like botocore's, which classify recognises by name."""


@pytest.mark.parametrize(
    "exc, kind",
    [
        (FileNotFoundError("b/k"), "missing"),
        (PermissionError("AccessDenied"), "denied"),
        (wrapped(Status(403), FileNotFoundError("url")), "denied"),  # fsspec HTTP's wrapping
        (wrapped(Status(404), FileNotFoundError("url")), "missing"),
        (wrapped(Status(503), FileNotFoundError("url")), "unavailable"),
        (wrapped(ConnectionRefusedError(), FileNotFoundError("url")), "unavailable"),
        (EndpointConnectionError("Could not connect"), "unavailable"),
        (TimeoutError(), "unavailable"),
        (ValueError("a bug"), None),
    ],
)
def test_classify_reads_the_cause_chain(exc, kind):
    assert classify(exc) == kind


@pytest.mark.parametrize(
    "exc, status",
    [
        (serve.ModelNotFoundError("s3://b/k", "m1"), 404),
        (serve.StorageAccessDeniedError("s3://b/k", "m1", "AccessDenied"), 403),
        (serve.StorageUnavailableError("s3://b/k", 4, 2.0, "m1", "refused"), 503),
        (serve.DiskCacheFullError("s3://b/k", 10, "no space"), 507),
    ],
)
def test_storage_errors_map_to_http_and_stay_os_errors(exc, status):
    response = error_response(exc)
    assert response.status == status
    assert b"s3://b/k" in response.body
    assert isinstance(exc, OSError) and exc.errno in (errno.ENOENT, errno.EACCES, errno.EHOSTUNREACH, errno.ENOSPC)
    assert isinstance(serve.ModelNotFoundError("u"), FileNotFoundError)
    assert isinstance(serve.StorageAccessDeniedError("u"), PermissionError)
    assert str(serve.ModelNotFoundError("u", "m")) == "No object at u (model 'm')."


def test_progress_logs_at_most_once_a_second_and_only_for_big_downloads(caplog):
    now = [0.0]
    log = logging.getLogger("test.progress")
    progress = Progress("s3://b/big", min_bytes=1000, clock=lambda: now[0], log=log)
    progress.set_total(10_000)
    with caplog.at_level(logging.INFO, logger="test.progress"):
        for _ in range(10):
            now[0] += 0.25
            progress.relative_update(1000)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # at 1.0s and 2.0s of 2.5s
    assert lines[0] == "Downloading s3://b/big: 0.0 of 0.0 MB (40%) at 0.0 MB/s."
    small = Progress("s3://b/small", min_bytes=1000, clock=lambda: now[0], log=log)
    small.set_total(999)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="test.progress"):
        for _ in range(10):
            now[0] += 1
            small.relative_update(100)
    assert caplog.records == []
