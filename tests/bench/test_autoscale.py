"""The autoscaling benchmark's pure parts: the arrival trace, replica-seconds, and which loads a
scale-down caused."""

from __future__ import annotations

from collections import Counter
from dataclasses import FrozenInstanceError

import pytest

from bench.autoscale_report import check_targets
from bench.bursts import FULL, QUICK, ArrivalTrace, Segment, make_arrivals
from bench.replica_count import replica_seconds, stopped
from bench.scale_events import scale_down_counts

FULL_DIGEST = "9c2144c9b86d58b4"
QUICK_DIGEST = "ca2c4e1c0d7cf6e9"


# ---- the trace --------------------------------------------------------------------------------


def test_traces_are_stable_across_runs():
    full, quick = make_arrivals(), make_arrivals(QUICK)
    assert full == make_arrivals() and full.digest() == FULL_DIGEST
    assert quick.digest() == QUICK_DIGEST
    assert full.duration_s == 240 and quick.duration_s == 60
    assert len(full) == 1496 and len(quick) == 516


def test_trace_is_frozen_and_sorted():
    trace = make_arrivals(QUICK)
    with pytest.raises(FrozenInstanceError):
        trace.seed = 1  # type: ignore[misc]
    assert list(trace.times) == sorted(trace.times)
    assert 0 <= trace.times[0] and trace.times[-1] < trace.duration_s


def test_seed_changes_the_trace():
    assert make_arrivals(QUICK, seed=1).digest() != make_arrivals(QUICK).digest()


def test_idle_segments_have_no_requests_and_bursts_add_cold_models():
    trace = make_arrivals(FULL)
    for a, b in trace.windows("idle"):
        assert not any(a <= t < b for t in trace.times)
    seen: set[str] = set()
    for k, (a, b) in enumerate(trace.windows("burst")):
        before = {m for t, m in zip(trace.times, trace.model_ids) if t < a}
        burst = {m for t, m in zip(trace.times, trace.model_ids) if a <= t < b and m.startswith("x")}
        assert burst and all(m.startswith(f"x{k}-") for m in burst)
        assert not burst & before  # cold: nothing earlier asked for them
        assert len(burst) <= trace.burst_models
        seen |= burst
    assert all(m.startswith(("b", "x")) for m in trace.model_ids)


def test_rates_are_about_right():
    trace = make_arrivals((Segment("base", 200), Segment("burst", 100)), base_rate=5,
                          burst_rate=10, seed=3)
    base = sum(1 for t in trace.times if t < 200)
    burst = sum(1 for t, m in zip(trace.times, trace.model_ids) if t >= 200 and m.startswith("x"))
    assert 900 < base < 1100 and 900 < burst < 1100


def test_base_load_is_zipf():
    trace = make_arrivals((Segment("base", 500),), base_models=30, base_rate=10)
    counts = Counter(trace.model_ids).most_common()
    assert counts[0][1] > 4 * counts[len(counts) // 2][1]


def test_windows():
    trace = make_arrivals((Segment("base", 10), Segment("burst", 5), Segment("idle", 3),
                           Segment("burst", 2)))
    assert trace.windows("burst") == [(10.0, 15.0), (18.0, 20.0)]
    assert trace.windows("idle") == [(15.0, 18.0)]


@pytest.mark.parametrize("kwargs", [
    dict(segments=()), dict(base_models=0), dict(burst_models=True), dict(base_rate=-1),
    dict(burst_rate=float("nan")), dict(s=-0.5), dict(seed="0"),
])
def test_bad_parameters_name_the_value(kwargs):
    with pytest.raises(ValueError):
        make_arrivals(**kwargs)


@pytest.mark.parametrize("kind, seconds", [("surge", 1), ("base", 0), ("idle", float("inf"))])
def test_bad_segments(kind, seconds):
    with pytest.raises(ValueError):
        Segment(kind, seconds)


def test_trace_type():
    assert isinstance(make_arrivals(QUICK), ArrivalTrace)


# ---- replica-seconds --------------------------------------------------------------------------


def test_replica_seconds_integrates_the_samples():
    samples = [(0.0, (1,)), (10.0, (1, 2)), (20.0, (1, 2, 3)), (25.0, (1,))]
    assert replica_seconds(samples, 0.0, 30.0) == pytest.approx(10 + 20 + 15 + 5)
    assert replica_seconds(samples, 5.0, 12.0) == pytest.approx(5 + 4)
    assert replica_seconds([], 0.0, 10.0) == 0.0


def test_stopped_replicas_are_the_ones_gone_by_the_end():
    samples = [(0.0, (1, 2)), (1.0, (1, 2, 3)), (2.0, (1, 3)), (3.0, (1,)), (9.0, ())]
    assert stopped(samples, 3.0) == {2: 1.0, 3: 2.0}
    assert stopped(samples, 9.5) == {1: 3.0, 2: 1.0, 3: 2.0}


# ---- loads caused by a scale-down -------------------------------------------------------------


def ev(t, event, model, pid):
    return {"t": t, "event": event, "model": model, "pid": pid}


def load(t, model, pid):
    return [ev(t, "request", model, pid), ev(t, "load_start", model, pid),
            ev(t + 0.25, "load_end", model, pid)]


def test_a_model_lost_with_its_replica_and_asked_for_again_is_a_scale_down_reload():
    events = sorted(
        load(0, "a", 1) + load(0, "b", 2) + [ev(1, "request", "a", 1)]
        + [ev(5, "unload", "a", 1)]  # replica 1's shutdown, long after its last request
        + load(6, "a", 2) + load(7, "a", 3),  # the second is a spread: replica 2 has it
        key=lambda e: e["t"])
    counts = scale_down_counts(events, stopped={1: 5.5})
    assert (counts.loads, counts.lost, counts.reloads) == (4, 1, 1)
    assert counts.reloaded_models == ("a",)


def test_lru_evictions_are_not_scale_down_reloads():
    events = sorted(
        load(0, "a", 1) + load(1, "b", 1) + [ev(1.0, "unload", "a", 1)]  # LRU, at b's load
        + load(2, "a", 2),
        key=lambda e: e["t"])
    assert scale_down_counts(events, stopped={}).reloads == 0
    # the replica stopping later does not turn the earlier LRU eviction into a loss
    events += [ev(9, "unload", "b", 1)]
    counts = scale_down_counts(events, stopped={1: 9.5})
    assert (counts.lost, counts.reloads) == (1, 0)


def test_an_lru_eviction_right_after_the_last_load_is_still_lru():
    events = sorted(load(0, "a", 1) + load(1, "b", 1) + [ev(1.27, "unload", "a", 1)]
                    + [ev(8, "unload", "b", 1)] + load(10, "a", 2) + load(10, "b", 2),
                    key=lambda e: e["t"])
    counts = scale_down_counts(events, stopped={1: 8.5})
    assert (counts.lost, counts.reloads, counts.reloaded_models) == (1, 1, ("b",))


def test_a_model_still_held_elsewhere_is_not_lost():
    events = sorted(load(0, "a", 1) + load(0, "a", 2) + [ev(5, "unload", "a", 1)]
                    + load(6, "a", 3), key=lambda e: e["t"])
    assert scale_down_counts(events, stopped={1: 5.5}).reloads == 0


def test_a_reload_is_counted_once_per_loss():
    events = sorted(load(0, "a", 1) + [ev(5, "unload", "a", 1)] + load(6, "a", 2)
                    + load(6.1, "a", 3),  # a duplicate while 2 loads it: not another reload
                    key=lambda e: e["t"])
    assert scale_down_counts(events, stopped={1: 5.5}).reloads == 1


def test_a_replica_killed_without_unloads_loses_what_it_held():
    events = sorted(load(0, "a", 1) + load(4, "a", 2), key=lambda e: e["t"])
    counts = scale_down_counts(events, stopped={1: 3.0})
    assert (counts.lost, counts.reloads) == (1, 1)
    assert scale_down_counts(events, stopped={}).reloads == 0  # still running: a spread


def test_a_request_after_the_loss_but_during_shutdown_is_a_reload():
    # replica 1 stops taking requests at t=1 but unloads only at t=5 (draining); the load
    # at t=3 on replica 2 is caused by the scale-down although 1 still had the model
    events = sorted(load(0, "a", 1) + [ev(1, "request", "a", 1), ev(5, "unload", "a", 1)]
                    + load(3, "a", 2), key=lambda e: e["t"])
    assert scale_down_counts(events, stopped={1: 5.5}).reloads == 1


def test_a_preload_is_not_a_request_path_reload():
    # modelplex's hand-off: replica 2 loads "a" (no request there asked for it) before 1 stops
    events = sorted(load(0, "a", 1) + [ev(4, "load_start", "a", 2), ev(4.25, "load_end", "a", 2),
                                       ev(5, "unload", "a", 1)] + [ev(6, "request", "a", 2)],
                    key=lambda e: e["t"])
    counts = scale_down_counts(events, stopped={1: 5.5})
    assert (counts.loads, counts.preloads, counts.lost, counts.reloads) == (2, 1, 1, 0)


# ---- targets ----------------------------------------------------------------------------------


def row(system, **kw):
    base = dict(system=system, autoscaled=True, errors=0, p99_ms=100.0, replica_seconds=100.0,
                scale_down_reloads=0)
    return {**base, **kw}


def test_targets():
    results = {"runs": [row("modelplex", p99_ms=40.0, replica_seconds=90.0, scale_down_reloads=2),
                        row("ray", p99_ms=100.0, scale_down_reloads=9)]}
    checks = {c["target"]: c["met"] for c in check_targets(results)}
    assert all(checks.values()) and len(checks) == 5
    results["runs"][0]["scale_down_reloads"] = 4
    results["runs"][0]["replica_seconds"] = 101.0
    met = [c["met"] for c in check_targets(results)]
    assert met == [True, True, True, False, False]


def test_targets_say_when_modelplex_did_not_autoscale():
    results = {"runs": [row("modelplex", autoscaled=False), row("ray")]}
    assert any("fixed count" in c["target"] for c in check_targets(results))
