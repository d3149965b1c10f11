"""How many replicas a deployment should have: the autoscaling policy, pure.

Ray Serve's rule is the base: the replica count follows requests (running plus queued) per
replica toward ``target_ongoing_requests``, with its scaling factors, bounds, cold start from
zero and the up/down delays, all with the same meaning. Two things are modelplex's own, because
a multiplexed deployment's cost is its cache as much as its requests:

- **The working set.** Models asked for again within the look-back are the hot ones; those
  that do not fit in the replicas' slots would each be loaded again. When the replicas spend
  real time reloading (at least ``RELOAD_BUDGET_S`` seconds a second: loads of models loaded
  earlier in the look-back, misses that more room would have saved), the count rises to what
  the hot models need, even if few requests are running; and it never drops to where the
  hot models left out would cost that much in reloads. Misses of models asked for once (a
  long tail no cache holds) count for nothing: they would miss anywhere. So base load whose
  hot set fits stays on one replica, however many of its requests miss.
- **Headroom when scaling down.** A scale-down must leave each replica under 80% of its target,
  so a load hovering around a threshold does not add and remove a replica every few seconds
  (and reload its models each time).

A scale-down waits ``downscale_delay_s`` from when the requests alone wanted fewer replicas, as
Ray's does, not from when the working set last fitted: once the hot models fit (for a
look-back, so a lull inside a burst does not count), the count drops at once, no later than
Ray's would.

``decide`` takes everything as arguments (``now`` included) and returns the new target, the
state to pass next time, and a reason for the log.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..._config import AutoscalingConfig

__all__ = ["CacheView", "Decision", "ScaleState", "decide", "ray_desired"]

# A scale-down must leave replicas at most this loaded, relative to the target.
DOWN_HEADROOM = 0.8
# Reloads matter once they take this many seconds a second: half a replica's time.
RELOAD_BUDGET_S = 0.5


@dataclass(frozen=True)
class CacheView:
    """What routers and replicas saw of the cache over the look-back window."""

    slots_per_replica: int  # models a replica keeps; <= 0: unknown or unbounded
    hot_models: int  # models asked for again
    reload_rate: float  # share of requests naming a model that reloaded one loaded before
    reload_s: float = 0.0  # seconds a second the replicas spent on those reloads
    # For each hot model, hottest first: seconds a second its repeat requests would cost as
    # loads (repeats x its load time / look-back), if it were not kept.
    again_s: tuple[float, ...] = ()


@dataclass(frozen=True)
class ScaleState:
    target: int
    direction: int = 0  # +1: wanting more since ``since``; -1: wanting fewer
    since: float | None = None
    load_since: float | None = None  # since when the requests alone have wanted fewer


@dataclass(frozen=True)
class Decision:
    target: int
    state: ScaleState
    reason: str = ""  # empty when the target did not change


def ray_desired(config: AutoscalingConfig, current: int, requests: float) -> int:
    """Ray Serve 2.60's count for ``requests`` running and queued on ``current`` replicas."""
    if current == 0:
        return math.ceil(requests / config.target_ongoing_requests)
    desired = requests / config.target_ongoing_requests
    factor = (config.upscaling_factor if desired > current else config.downscaling_factor) or 1.0
    scaled = math.ceil(current + factor * (desired - current))
    if math.ceil(desired) < current and scaled == current:
        scaled -= 1  # a small downscaling factor must still make progress
    return scaled


def _clamp(config: AutoscalingConfig, count: int) -> int:
    return max(config.min_replicas, min(config.max_replicas, count))


def _for_working_set(config: AutoscalingConfig, cache: CacheView | None) -> int:
    """Replicas the hot models need, when reloads take real time now (else 0)."""
    if cache is None or cache.slots_per_replica <= 0 or cache.reload_s < RELOAD_BUDGET_S:
        return 0
    count = 1
    while not _keeps_working_set(cache, count):
        count += 1
    return count


def _keeps_working_set(cache: CacheView | None, count: int) -> bool:
    """Whether ``count`` replicas hold enough of the hot models that those left out would
    cost less than the budget in reloads."""
    if cache is None or cache.slots_per_replica <= 0:
        return True
    return sum(cache.again_s[count * cache.slots_per_replica:]) < RELOAD_BUDGET_S


def decide(
    config: AutoscalingConfig,
    state: ScaleState,
    requests: float,
    now: float,
    cache: CacheView | None = None,
) -> Decision:
    """The next target for a deployment whose target is ``state.target``.

    ``requests`` is the average of running plus queued requests over the look-back window,
    summed over every router."""
    current = state.target
    if current == 0 and requests > 0:  # cold start: no delay, as in Ray
        target = _clamp(config, max(1, math.ceil(config.upscaling_factor or 1.0)))
        return Decision(
            target, ScaleState(target), f"scale 0→{target}: {requests:g} requests waiting"
        )

    by_load = ray_desired(config, current, requests)
    headroom = math.ceil(requests / (config.target_ongoing_requests * DOWN_HEADROOM))
    # The requests alone (with headroom) want fewer: Ray's own downscale delay runs from here.
    load_fewer = _clamp(config, max(by_load, headroom)) < current
    load_since = (state.load_since if state.load_since is not None else now) if load_fewer else None
    by_cache = _for_working_set(config, cache)
    desired = _clamp(config, max(by_load, by_cache))
    if desired < current:
        # Scale down only as far as headroom and the working set allow.
        floor = headroom
        while floor < current and not _keeps_working_set(cache, floor):
            floor += 1
        desired = min(current, _clamp(config, max(desired, floor)))

    if desired == current:
        return Decision(current, ScaleState(current, load_since=load_since))
    direction = 1 if desired > current else -1
    since = state.since if state.direction == direction and state.since is not None else now
    if direction > 0:
        ready = now - since + 1e-6 >= config.upscale_delay_s
    else:
        delay = config.downscale_delay_s
        if current == 1 and desired == 0 and config.downscale_to_zero_delay_s is not None:
            delay = config.downscale_to_zero_delay_s
        fitted = min(delay, config.look_back_period_s)  # the working set fits for a look-back
        ready = (load_since is not None and now - load_since + 1e-6 >= delay
                 and now - since + 1e-6 >= fitted)
    if not ready:
        return Decision(current, ScaleState(current, direction, since, load_since))
    return Decision(
        desired, ScaleState(desired, load_since=load_since if direction < 0 else None),
        _reason(config, current, desired, requests, by_cache, cache),
    )


def _reason(
    config: AutoscalingConfig, current: int, desired: int, requests: float, by_cache: int,
    cache: CacheView | None,
) -> str:
    target = config.target_ongoing_requests
    if desired > current and by_cache >= desired and cache is not None:
        return (
            f"scale {current}→{desired}: {cache.hot_models} hot models need "
            f"{by_cache}×{cache.slots_per_replica} slots (reloads take {cache.reload_s:.2g}s a "
            f"second; {cache.reload_rate:.0%} of requests reload)"
        )
    sign = ">" if desired > current else "<"
    return f"scale {current}→{desired}: {requests:.3g} ongoing {sign} {current}×{target:g} target"
