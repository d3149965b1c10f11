"""bench.storage's pure parts: sizes, the .npy payloads, ratios, targets and the summary."""

from __future__ import annotations

import io

import numpy as np
import pytest

from bench.s3_server import is_download
from bench.storage import label, npy, parse_size
from bench.storage_report import check_targets, ratios, summary

MB = 1024 * 1024


def test_sizes_parse_and_print_back():
    assert parse_size("16K") == 16 * 1024 and label(16 * 1024) == "16K"
    assert parse_size(" 32m ") == 32 * MB and label(32 * MB) == "32M"
    assert parse_size("0.5M") == MB // 2 and label(MB // 2) == "512K"
    assert parse_size("1000") == 1000 and label(1000) == "1000"


@pytest.mark.parametrize("text, needle", [("lots", "'LOTS'"), ("12", "below 128")])
def test_bad_sizes_name_the_value(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_size(text)


def test_npy_payload_has_the_exact_size_and_loads():
    data = npy(4096, 300)
    assert len(data) == 4096
    array = np.load(io.BytesIO(data))
    assert array.dtype == np.uint8 and array.size == 4096 - 128 and set(array.tolist()) == {44}


def test_a_download_is_a_get_from_byte_zero():
    assert is_download("GET", None) and is_download("GET", "bytes=0-8388607")
    assert not is_download("GET", "bytes=8388608-16777215")
    assert not is_download("HEAD", None)


def _results(seed_reload=500.0, fetch_reload=50.0, downloads=1, fetch_ms=103.0):
    paths = [
        {"loader": loader, "size": size, "size_label": lab, "cold_ms": 400.0,
         "reload_ms": reload, "memory_ms": 2.0, "downloads": 1, "bytes_downloaded": size}
        for size, lab in ((16 * 1024, "16K"), (32 * MB, "32M"))
        for loader, reload in (("aioboto3", seed_reload), ("fetch", fetch_reload))
    ]
    trace = [
        {"system": "ray", "loader": "aioboto3", "label": "Ray Serve lru + aioboto3",
         "bytes_downloaded": 900, "p99_ms": 800.0},
        {"system": "modelplex", "loader": "fetch", "label": "modelplex[local] lru + fetch",
         "bytes_downloaded": 300, "p99_ms": 200.0},
    ]
    return {"paths": paths, "at_once": [{"loader": "fetch", "downloads": downloads}],
            "bookkeeping": [{"size_label": "32M", "reps": 3, "fetch_ms": fetch_ms,
                             "fsspec_ms": 100.0}],
            "trace": trace}


def test_ratios_compare_side_by_side():
    r = ratios(_results())
    assert r["paths.32M.seed_reload_over_fetch_reload"] == 10.0
    assert r["paths.32M.fetch_cold_over_fetch_reload"] == 8.0
    assert r["bookkeeping.fetch_over_fsspec"] == 1.03
    assert r["trace.ray_aioboto3_over_fetch.bytes"] == 3.0
    assert r["trace.ray_aioboto3_over_fetch.p99"] == 4.0


def test_targets_met_and_missed():
    met = check_targets(_results())
    # The warm-disk target is for 32 MB and up: 16K is not checked.
    assert set(met) == {"warm_disk_reload_5x_faster_than_redownload_32M",
                        "one_download_per_object_per_node", "bookkeeping_under_5_percent"}
    assert all(t["met"] for t in met.values())
    missed = check_targets(_results(fetch_reload=200.0, downloads=4, fetch_ms=110.0))
    assert not any(t["met"] for t in missed.values())
    assert missed["one_download_per_object_per_node"]["value"] == 4


def test_targets_not_measured_without_fetch_rows():
    targets = check_targets({"paths": [], "at_once": [], "bookkeeping": [], "trace": []})
    assert all(t["met"] is None for t in targets.values())


def test_summary_has_every_table_and_the_verdicts():
    text = summary(_results(downloads=2))
    for needle in ("Load paths", "at once", "bare fsspec", "Eviction-heavy trace",
                   "| Ray Serve lru + aioboto3 |", "seed_reload_over_fetch_reload: 10.0",
                   "one_download_per_object_per_node: MISSED (2)"):
        assert needle in text, needle
