"""The autoscaling policy, pure: Ray Serve's rule plus the cache, with explicit times."""

from __future__ import annotations

import math

from modelplex._control.autoscale.policy import CacheView, ScaleState, decide, ray_desired
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


def hot(models: int, each_s: float, reload_s: float) -> CacheView:
    """``models`` hot models whose repeats would each cost ``each_s`` seconds a second as
    loads, and replicas spending ``reload_s`` seconds a second reloading now."""
    return CacheView(4, models, 0.3 if reload_s else 0.0, reload_s, (each_s,) * models)


def test_a_working_set_that_does_not_fit_scales_up_even_with_few_requests():
    decision = decide(FAST, ScaleState(1), 1.0, now=0.0, cache=hot(10, 0.3, reload_s=1.0))
    assert decision.target == 3  # 8 fit in 2 replicas, but the 2 left out would cost 0.6 s/s
    assert "10 hot models need 3×4 slots" in decision.reason and "reloads take 1s" in decision.reason
    # Without reloads the working set is not the problem (misses of a long tail are not).
    assert decide(FAST, ScaleState(1), 1.0, now=0.0, cache=hot(10, 0.3, reload_s=0.0)).target == 1
    # Hot models that do not fit but whose reloads cost little: one replica it stays.
    assert decide(FAST, ScaleState(1), 1.0, now=0.0, cache=hot(6, 0.05, reload_s=0.6)).target == 1


def test_scale_down_keeps_the_working_set():
    assert decide(FAST, ScaleState(5), 0.5, now=0.0, cache=hot(10, 0.3, reload_s=0.0)).target == 3


def test_a_scale_down_waits_as_long_as_rays_from_when_the_load_dropped_not_from_the_working_set():
    config = AutoscalingConfig(min_replicas=1, max_replicas=4, target_ongoing_requests=2,
                               upscale_delay_s=3, downscale_delay_s=10, look_back_period_s=5)
    state, burst, after = ScaleState(4), hot(16, 0.2, reload_s=1.0), hot(2, 0.05, reload_s=0.0)
    for now in range(0, 30):  # a burst: few requests running, but 16 hot models
        decision = decide(config, state, 1.0, float(now), cache=burst)
        assert decision.target == 4
        state = decision.state
    fitted = None
    for now in range(30, 60):  # the burst's models are gone from the look-back
        decision = decide(config, state, 1.0, float(now), cache=after)
        if decision.target < 4:
            fitted = now
            break
        state = decision.state
    # The requests have wanted one replica for 30 s: once the working set has fitted for a
    # look-back (5 s), down it goes at once; Ray's rule would have gone at 10 s, as load only.
    assert fitted == 35 and decision.target == 1


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
        # What the 9 hot models' repeats cost when left out, and the reloads there are now.
        cache = CacheView(4, 9, 0.5, 0.0 if our.target >= 3 else 2.0, (0.6,) * 9)
        decision = decide(config, our, load(our.target), float(now), cache=cache)
        our_changes += decision.target != our.target
        our = decision.state
    assert ray_changes >= 20 and our_changes == 0 and our.target == 3
    assert math.isfinite(load(1))


def test_a_scale_down_hands_a_survivor_only_models_hotter_than_those_it_would_drop():
    from modelplex._messages import DeploymentID, RouterReport
    from modelplex._control.autoscale.scaler import Scaler

    scaler, deployment = Scaler(), DeploymentID("app", "d")
    held = (("r1", tuple((f"a{i}", 0.3) for i in range(4))),
            ("r2", tuple((f"b{i}", 0.3) for i in range(4))),
            ("r3", (("c0", 0.3), ("cold", 0.3))))
    models = (*((m, 5) for _, ms in held[:2] for m, _ in ms), ("c0", 9), ("cold", 1))
    scaler.record(RouterReport("router", deployment, 0, 0, 10, 0, models, held, 4), now=0.0)
    assigned: dict[str, int] = {}
    first = scaler.hand_off(deployment, "r1", ["r3"], assigned)
    second = scaler.hand_off(deployment, "r2", ["r3"], assigned)
    # r3 keeps c0 (hotter than all), gives up "cold": 3 of the leavers' models, not 2 per leaver.
    assert [m for m, _ in first] == ["a0", "a1", "a2"] and second == []
    assert assigned == {"r3": 3}


def _bursty_run(seed: int = 0):
    """The autoscaler over a simulated bursty trace, 0.5 s a step: Zipf base load on 30 models
    (4 requests a second), then 20 cold models go hot (12 more a second) for 30 s, then base
    load again. Replicas hold 4 models each (LRU; a model's home is its hash), a miss costs a
    250 ms load, and what routers report running follows from Little's law. Returns the
    replica count at each step and the steps' reports of who was loading what."""
    import random
    import zlib
    from collections import OrderedDict

    from modelplex._control.autoscale.scaler import Scaler
    from modelplex._messages import DeploymentID, ModelEvent, ModelEvents, RouterReport

    rng = random.Random(seed)
    base = [f"b{i}" for i in range(30)]
    weights = [1 / (i + 1) ** 1.1 for i in range(30)]
    burst = [f"h{i}" for i in range(20)]
    config = AutoscalingConfig(min_replicas=1, max_replicas=4, target_ongoing_requests=2,
                               upscale_delay_s=3, downscale_delay_s=10, look_back_period_s=5)
    scaler, deployment = Scaler(), DeploymentID("app", "d")
    caches: list[OrderedDict] = [OrderedDict()]
    counts = []
    for step in range(200):  # 100 s: base 0-30, burst 30-60, base 60-100
        now = step * 0.5
        arrivals = [rng.choices(base, weights)[0] for _ in range(rng.randint(1, 3))]
        if 30 <= now < 60:
            arrivals += [rng.choice(burst) for _ in range(6)]
        events, misses, busy_s, models = [], 0, 0.0, {}
        for model_id in arrivals:
            models[model_id] = models.get(model_id, 0) + 1
            cache = caches[zlib.crc32(model_id.encode()) % len(caches)]
            if model_id in cache:
                cache.move_to_end(model_id)
                busy_s += 0.005
                continue
            misses += 1
            busy_s += 0.255
            cache[model_id] = True
            events.append(ModelEvent(now, "loaded", model_id, 0.25))
            if len(cache) > 4:
                cache.popitem(last=False)
        scaler.record(RouterReport("router", deployment, round(busy_s / 0.5), 0, len(arrivals),
                                   misses, tuple(models.items()), (), 4, len(arrivals)), now)
        scaler.models(deployment, ModelEvents("r", tuple(events)), now)
        target = scaler.step(deployment, config, len(caches), now).target
        while len(caches) < target:
            caches.append(OrderedDict())
        del caches[target:]
        counts.append(target)
    return counts


def test_on_a_bursty_trace_base_load_stays_on_one_replica_and_bursts_scale_out_and_back():
    counts = _bursty_run()
    at = lambda t: counts[int(t * 2)]  # noqa: E731
    assert max(counts[:60]) == 1  # base load: its hot set fits one replica
    assert max(counts[60:120]) >= 3 and at(40) >= 3  # the burst's 20 hot models do not
    # The burst ends at 60 s: down within the downscale delay of the load dropping, and to one.
    first_down = next(i for i in range(120, 200) if counts[i] < counts[i - 1]) / 2
    assert first_down <= 60 + 10, first_down
    assert max(counts[150:]) == 1
    changes = sum(a != b for a, b in zip(counts, counts[1:]))
    assert changes <= 4, counts  # no flapping inside the burst
