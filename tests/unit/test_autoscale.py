"""The autoscaling policy, pure: Ray Serve's rule plus the cache, with explicit times."""

from __future__ import annotations

import math

from modelplex._autoscale import CacheView, ScaleState, decide, ray_desired
from modelplex._config import AutoscalingConfig

FAST = AutoscalingConfig(
    min_replicas=1, max_replicas=10, target_ongoing_requests=2, upscale_delay_s=0,
    downscale_delay_s=0,
)


def test_ray_rule_follows_requests_per_replica():
    assert ray_desired(FAST, 2, 8.0) == 4
    assert ray_desired(FAST, 4, 2.0) == 1
    halved = AutoscalingConfig(max_replicas=10, upscaling_factor=0.5, downscaling_factor=0.5)
    assert ray_desired(halved, 2, 12.0) == 4  # 2 + 0.5 × (6 - 2)
    assert ray_desired(halved, 4, 5.0) == 3  # desired 2.5: the factor alone would stall at 4


def test_scale_up_waits_for_the_upscale_delay_and_resets_when_the_load_drops():
    config = AutoscalingConfig(max_replicas=10, target_ongoing_requests=2, upscale_delay_s=10)
    state = ScaleState(2)
    first = decide(config, state, 10.0, now=0.0)
    assert first.target == 2 and first.state.direction == 1
    assert decide(config, first.state, 10.0, now=9.0).target == 2
    # The load dipped: the wait starts over.
    dipped = decide(config, first.state, 3.0, now=5.0)
    assert decide(config, dipped.state, 10.0, now=12.0).target == 2
    done = decide(config, decide(config, dipped.state, 10.0, now=12.0).state, 10.0, now=22.0)
    assert done.target == 5 and "scale 2→5" in done.reason and "10 ongoing > 2×2 target" in done.reason


def test_cold_start_from_zero_is_immediate():
    config = AutoscalingConfig(min_replicas=0, max_replicas=4, upscale_delay_s=30)
    decision = decide(config, ScaleState(0), 1.0, now=0.0)
    assert decision.target == 1 and "scale 0→1" in decision.reason


def test_idle_scales_to_zero_after_its_delay():
    config = AutoscalingConfig(min_replicas=0, max_replicas=4, downscale_delay_s=600,
                               downscale_to_zero_delay_s=5)
    waiting = decide(config, ScaleState(1), 0.0, now=0.0)
    assert waiting.target == 1
    assert decide(config, waiting.state, 0.0, now=5.0).target == 0


def test_bounds_hold():
    assert decide(FAST, ScaleState(10), 100.0, now=0.0).target == 10
    assert decide(FAST, ScaleState(1), 0.0, now=0.0).target == 1


def test_a_working_set_that_does_not_fit_scales_up_even_with_few_requests():
    cache = CacheView(slots_per_replica=4, hot_models=10, miss_rate=0.4)
    decision = decide(FAST, ScaleState(1), 1.0, now=0.0, cache=cache)
    assert decision.target == 3
    assert "10 hot models need 3×4 slots" in decision.reason
    # Without misses the working set is not the problem.
    assert decide(FAST, ScaleState(1), 1.0, now=0.0, cache=CacheView(4, 10, 0.0)).target == 1


def test_scale_down_keeps_the_working_set():
    cache = CacheView(slots_per_replica=4, hot_models=10, miss_rate=0.0)
    assert decide(FAST, ScaleState(5), 0.5, now=0.0, cache=cache).target == 3


def _ray_rule(config, state, requests, now):
    """Ray Serve's rule alone (no headroom, no cache), with the same delays."""
    desired = max(config.min_replicas, min(config.max_replicas, ray_desired(config, state[0], requests)))
    if desired == state[0]:
        return (state[0], None)
    since = state[1] if state[1] is not None else now
    delay = config.upscale_delay_s if desired > state[0] else config.downscale_delay_s
    return (desired, None) if now - since >= delay else (state[0], since)


def test_a_load_hovering_at_a_threshold_flaps_under_rays_rule_but_not_here():
    config = AutoscalingConfig(min_replicas=1, max_replicas=10, target_ongoing_requests=2,
                               upscale_delay_s=2, downscale_delay_s=2)
    trace = [4.4 if (t // 4) % 2 == 0 else 3.9 for t in range(120)]  # one sample a second
    ray_state, ours = (2, None), ScaleState(2)
    ray_changes = our_changes = 0
    for now, requests in enumerate(trace):
        new = _ray_rule(config, ray_state, requests, float(now))
        ray_changes += new[0] != ray_state[0]
        ray_state = new
        decision = decide(config, ours, requests, float(now))
        our_changes += decision.target != ours.target
        ours = decision.state
    assert ray_changes >= 10  # 2→3→2→3...: a replica (and its models) churned every few seconds
    assert our_changes == 1 and ours.target == 3


def test_a_scale_down_that_would_thrash_the_cache_flaps_under_rays_rule_but_not_here():
    """Idle-looking replicas whose removal makes the hot models miss, reload, and pile up."""
    config = AutoscalingConfig(min_replicas=1, max_replicas=10, target_ongoing_requests=2,
                               upscale_delay_s=0, downscale_delay_s=0)
    ray_count, our = 3, ScaleState(3)
    ray_changes = our_changes = 0
    for now in range(60):
        # 9 hot models, 4 slots a replica: with fewer than 3 replicas they miss and loads queue.
        def load(count):
            return 0.5 if count >= 3 else 8.0
        ray_new = _ray_rule(config, (ray_count, None), load(ray_count), float(now))[0]
        ray_changes += ray_new != ray_count
        ray_count = ray_new
        cache = CacheView(4, 9, 0.05 if our.target >= 3 else 0.5)
        decision = decide(config, our, load(our.target), float(now), cache=cache)
        our_changes += decision.target != our.target
        our = decision.state
    assert ray_changes >= 20 and our_changes == 0 and our.target == 3
    assert math.isfinite(load(1))


def test_a_scale_down_fills_at_most_half_of_each_survivors_slots():
    from modelplex._messages import DeploymentID, RouterReport
    from modelplex._scaler import Scaler

    scaler, deployment = Scaler(), DeploymentID("app", "d")
    held = (("r1", tuple((f"a{i}", 0.3) for i in range(4))),
            ("r2", tuple((f"b{i}", 0.3) for i in range(4))),
            ("r3", (("c0", 0.3),)))
    models = tuple((m, 5) for _, ms in held for m, _ in ms)
    scaler.record(RouterReport("router", deployment, 0, 0, 10, 0, models, held, 4), now=0.0)
    assigned: dict[str, int] = {}
    first = scaler.hand_off(deployment, "r1", ["r3"], assigned)
    second = scaler.hand_off(deployment, "r2", ["r3"], assigned)
    assert len(first) == 2 and second == []  # 4 slots: 2 preloads in all, not 2 per leaver
    assert assigned == {"r3": 2}
