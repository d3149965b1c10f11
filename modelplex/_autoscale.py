"""How many replicas a deployment should have: the autoscaling policy, pure.

Ray Serve's rule is the base: the replica count follows requests (running plus queued) per
replica toward ``target_ongoing_requests``, with its scaling factors, bounds, cold start from
zero and the up/down delays, all with the same meaning. Two things are modelplex's own, because
a multiplexed deployment's cost is its cache as much as its requests:

- **The working set.** When the models in demand do not fit in the slots the replicas have, and
  requests keep missing, more replicas are wanted even if few requests are running: every miss
  is a load. The count never drops below what the hot models need.
- **Headroom when scaling down.** A scale-down must leave each replica under 80% of its target,
  so a load hovering around a threshold does not add and remove a replica every few seconds
  (and reload its models each time).

``decide`` takes everything as arguments (``now`` included) and returns the new target, the
state to pass next time, and a reason for the log.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ._config import AutoscalingConfig

__all__ = ["CacheView", "Decision", "ScaleState", "decide", "ray_desired"]

# A scale-down must leave replicas at most this loaded, relative to the target.
DOWN_HEADROOM = 0.8
# Misses matter once this share of requests miss.
MISS_RATE_FLOOR = 0.1


@dataclass(frozen=True)
class CacheView:
    """What the routers saw of the cache over the look-back window."""

    slots_per_replica: int  # models a replica keeps; <= 0: unknown or unbounded
    hot_models: int  # distinct models that make up most of the demand
    miss_rate: float  # share of requests placed on a replica that did not hold their model


@dataclass(frozen=True)
class ScaleState:
    target: int
    direction: int = 0  # +1: wanting more since ``since``; -1: wanting fewer
    since: float | None = None


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
    """Replicas the hot models need, when their misses say they do not fit (else 0)."""
    if cache is None or cache.slots_per_replica <= 0 or cache.miss_rate < MISS_RATE_FLOOR:
        return 0
    return math.ceil(cache.hot_models / cache.slots_per_replica)


def _keeps_working_set(cache: CacheView | None, count: int) -> bool:
    if cache is None or cache.slots_per_replica <= 0:
        return True
    return cache.hot_models <= count * cache.slots_per_replica


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
    by_cache = _for_working_set(config, cache)
    desired = _clamp(config, max(by_load, by_cache))
    if desired < current:
        # Scale down only as far as headroom and the working set allow.
        floor = math.ceil(requests / (config.target_ongoing_requests * DOWN_HEADROOM))
        while floor < current and not _keeps_working_set(cache, floor):
            floor += 1
        desired = min(current, _clamp(config, max(desired, floor)))

    if desired == current:
        return Decision(current, ScaleState(current))
    direction = 1 if desired > current else -1
    since = state.since if state.direction == direction and state.since is not None else now
    if direction > 0:
        delay = config.upscale_delay_s
    elif current == 1 and desired == 0 and config.downscale_to_zero_delay_s is not None:
        delay = config.downscale_to_zero_delay_s
    else:
        delay = config.downscale_delay_s
    if now - since + 1e-6 < delay:
        return Decision(current, replace(state, direction=direction, since=since))
    return Decision(desired, ScaleState(desired), _reason(config, current, desired, requests, by_cache, cache))


def _reason(
    config: AutoscalingConfig, current: int, desired: int, requests: float, by_cache: int,
    cache: CacheView | None,
) -> str:
    target = config.target_ongoing_requests
    if desired > current and by_cache >= desired and cache is not None:
        return (
            f"scale {current}→{desired}: {cache.hot_models} hot models need "
            f"{by_cache}×{cache.slots_per_replica} slots ({cache.miss_rate:.0%} of requests miss)"
        )
    sign = ">" if desired > current else "<"
    return f"scale {current}→{desired}: {requests:.3g} ongoing {sign} {current}×{target:g} target"
