"""The tenants benchmark's pure parts: arrivals, per-model figures, the targets."""

from __future__ import annotations

import random

import pytest

from bench.tenants import (
    checks,
    per_id_table,
    phase_rates,
    poisson,
    quiet_figures,
    quiet_ids,
    schedule,
    summarize,
)


def test_poisson_arrivals_have_their_rate_and_stay_in_the_window():
    times = poisson(50.0, 100.0, random.Random(1))
    assert len(times) == pytest.approx(5000, rel=0.05)
    assert times == sorted(times) and 0 < times[0] and times[-1] < 100.0
    assert poisson(0.0, 10.0, random.Random(1)) == []


def test_a_schedule_is_seeded_per_id():
    one = schedule({"a": 5.0, "b": 1.0}, 10.0, seed=3)
    assert one == schedule({"a": 5.0, "b": 1.0}, 10.0, seed=3)
    assert [t for t, m in one if m == "a"] == [t for t, m in schedule({"a": 5.0}, 10.0, 3)]
    assert one == sorted(one) and {m for _, m in one} == {"a", "b"}


def test_phases_offer_what_the_benchmark_says():
    alone, = phase_rates("alone", 16.0, 10)
    assert sorted(alone) == quiet_ids(10) and sum(alone.values()) == pytest.approx(0.45 * 16)
    quiet, noisy = phase_rates("flood", 16.0, 10)
    assert quiet == alone and noisy == {"noisy": 160.0}
    big, small = phase_rates("pair", 16.0, 10)
    assert big["big"] == 10 * small["small"] == 160.0


def test_summaries_count_the_window_and_answered_latencies_only():
    results = [(0.5, "a", 9999.0, 200),  # warm-up: not counted
               (1.0, "a", 10.0, 200), (1.5, "a", 30.0, 200), (2.0, "a", 5.0, 429),
               (2.5, "b", 7.0, 503), (3.0, "b", 1.0, 0),
               (11.0, "a", 1.0, 200)]  # after the window
    out = summarize(results, start=1.0, seconds=10.0)
    assert out["a"] == {"sent": 3, "ok": 2, "shed": 1, "errors": 0, "p50_ms": 10.0,
                        "p99_ms": 30.0, "ok_per_s": 0.2}
    assert out["b"]["shed"] == 1 and out["b"]["errors"] == 1 and out["b"]["p99_ms"] is None
    quiet = quiet_figures(results, ["a", "b"], 1.0, 10.0)
    assert quiet == {"quiet_p50_ms": 10.0, "quiet_p99_ms": 30.0, "quiet_worst_p99_ms": 30.0,
                     "quiet_shed": 0.6}
    assert quiet_figures(results, ["c"], 1.0, 10.0)["quiet_p99_ms"] is None


def _rows(label, alone_p99, flood_p99, shed, noisy, quiet_ok, big, small):
    base = {"system": label, "label": label}
    return [
        {**base, "phase": "alone", "quiet_p99_ms": alone_p99, "quiet_shed": 0.0,
         "per_model": {"quiet-0": {"p50_ms": 1.0, "p99_ms": alone_p99}}},
        {**base, "phase": "flood", "quiet_p99_ms": flood_p99, "quiet_shed": shed,
         "noisy_ok_per_s": noisy, "quiet_ok_per_s": quiet_ok,
         "per_model": {"quiet-0": {"p50_ms": 2.0, "p99_ms": flood_p99}}},
        {**base, "phase": "pair", "big_ok_per_s": big, "small_ok_per_s": small, "per_model": {}},
    ]


def test_the_targets():
    rows = _rows("fair", 700.0, 900.0, 0.0, 9.0, 7.0, 8.0, 7.5) + \
        _rows("fifo", 700.0, 6000.0, 0.5, 10.0, 1.0, 14.0, 1.5)
    met = {c["target"]: (c["value"], c["met"]) for c in checks(rows, capacity=16.0)}
    assert met["fair: quiet p99 with the flood <= 1.5 x alone"] == (1.286, True)
    assert met["fair: noisy keeps >= 80% of what the quiet ids leave"] == (1.0, True)
    assert met["fair: the 10:1 pair within 1.25 x of each other"] == (1.067, True)
    assert met["fifo: quiet p99 with the flood <= 1.5 x alone"] == (8.571, False)
    assert met["fifo: the 10:1 pair within 1.25 x of each other"] == (9.333, False)
    assert checks(rows[:2], capacity=16.0) == []  # a system without every phase: no verdict
    text = per_id_table(rows[:3], ["quiet-0"])
    assert "| quiet-0 | 1.0 | 700.0 | 2.0 | 900.0 |" in text
