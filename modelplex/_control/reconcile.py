"""What a deployment's replicas should do next: the controller's one pure decision.

Level-triggered, as Kubernetes controllers and Ray Serve's ``DeploymentState`` are: each pass
compares the *target* (how many replicas, of which code version) with what is *observed* (each
replica's phase and since when, and the start failures so far) and returns the actions that
close the gap. Events only wake the loop that calls this; they never carry a decision, so a
missed, repeated or reordered event cannot leave two replacements running.

Restart backoff, start time-outs, the surge allowed during a rollout and "the deployment failed
after N attempts" are all decided here, from explicit inputs and an explicit ``now``.

On a backend that places replicas itself (local), a replica that does not fit on the node yet
is ``PENDING``: it counts toward the target but holds nothing and cannot time out. Whether
stopping some replicas would make room for the new version comes in as ``fits``, a predicate
the loop builds on the node's ledger, so a rollout's surge that does not fit waits for old
replicas to stop, one at a time, instead of failing or waiting forever.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

__all__ = [
    "History", "Phase", "Plan", "Policy", "ReplicaObservation", "Target", "reconcile",
    "retire_order",
]


class Phase(enum.Enum):
    PENDING = "pending"  # waiting for room on the node; not yet asked of the backend
    STARTING = "starting"  # asked of the backend, not yet ready
    RUNNING = "running"  # ready and published to routers
    STOPPING = "stopping"  # draining, then gone


@dataclass(frozen=True)
class ReplicaObservation:
    replica_id: str
    phase: Phase
    code_version: int
    since: float  # when it entered ``phase``


@dataclass(frozen=True)
class Target:
    num_replicas: int
    code_version: int


@dataclass(frozen=True)
class History:
    """Start failures of the target's code version in a row, and whether it was ever whole."""

    failures: int = 0
    last_failure_at: float = -math.inf
    # Once the target version ran all its replicas, a replacement that fails to start is retried
    # forever (with backoff): the deployment worked, and its nodes may come back.
    healthy_once: bool = False


@dataclass(frozen=True)
class Policy:
    start_timeout_s: float = 300.0
    backoff_s: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
    # A version that never ran whole fails after this many start failures per replica wanted
    # (at most ``max_failures_total``), as Ray Serve gives up on a constructor that keeps raising.
    failures_per_replica: int = 3
    max_failures_total: int = 20
    # Extra replicas allowed during a rollout (None: as many as the target, so every new
    # replica starts before any old one stops).
    max_surge: int | None = None

    def backoff(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        return self.backoff_s[min(failures, len(self.backoff_s)) - 1]

    def max_failures(self, target: Target) -> int:
        return min(self.max_failures_total, self.failures_per_replica * max(1, target.num_replicas))

    def surge(self, target: Target) -> int:
        return target.num_replicas if self.max_surge is None else self.max_surge


@dataclass(frozen=True)
class Plan:
    start: int = 0  # replicas of the target version to start now
    stop: tuple[str, ...] = ()  # replica ids to stop (drain, then end)
    timed_out: tuple[str, ...] = ()  # of ``stop``: starting too long, each one start failure
    failed: bool = False  # the target version gave up: too many start failures in a row
    wake_at: float | None = None  # look again then, even if no event comes
    reasons: tuple[str, ...] = field(default=(), compare=False)  # for the log


def reconcile(
    target: Target,
    replicas: Sequence[ReplicaObservation],
    history: History,
    now: float,
    policy: Policy = Policy(),
    stop_order: Sequence[str] = (),
    fits: Callable[[frozenset[str]], bool] | None = None,
) -> Plan:
    """The actions that bring ``replicas`` to ``target``; pure, so ``now`` is an input.

    ``stop_order`` ranks running replicas cheapest to lose first (the autoscaler's view of
    what they hold); replicas it does not name go after it, newest first. ``fits(released)``
    says whether the target version's first pending replica would fit on the node once the
    ``released`` replicas let go (None: the backend places replicas itself)."""
    live = [r for r in replicas if r.phase is not Phase.STOPPING]
    timed_out = tuple(
        r.replica_id
        for r in live
        if r.phase is Phase.STARTING and now - r.since >= policy.start_timeout_s
    )
    live = [r for r in live if r.replica_id not in timed_out]
    current = [r for r in live if r.code_version == target.code_version]
    old = [r for r in live if r.code_version != target.code_version]
    # An old version's pending replica covers nothing: it goes at once.
    old_pending = [r.replica_id for r in old if r.phase is Phase.PENDING]
    old = [r for r in old if r.phase is not Phase.PENDING]
    failures = history.failures + len(timed_out)
    failed = not history.healthy_once and failures >= policy.max_failures(target)
    stop: list[str] = list(timed_out)
    reasons: list[str] = [f"replica {r} did not start within {policy.start_timeout_s:g}s" for r in timed_out]
    wake: list[float] = [
        r.since + policy.start_timeout_s for r in current if r.phase is Phase.STARTING
    ]
    start = 0

    if failed:
        # Give up on this version: stop what of it is still starting; what runs stays.
        starting = [r.replica_id for r in current if r.phase in (Phase.STARTING, Phase.PENDING)]
        stop += old_pending
        stop += starting
        reasons.append(f"gave up after {failures} failed starts")
        return Plan(0, tuple(stop), timed_out, True, None, tuple(reasons))

    want, have = target.num_replicas, len(current)
    if have < want:
        not_before = (history.last_failure_at if not timed_out else now) + policy.backoff(failures)
        if now >= not_before:
            room = want + policy.surge(target) - (len(live) - len(old_pending))
            start = max(0, min(want - have, room))
            if start:
                reasons.append(f"start {start}: {have} of {want} replicas")
        else:
            wake.append(not_before)
    elif have > want:
        # Scale down: replicas pending, then starting first (nothing to lose), then as ranked.
        rank = {replica_id: i for i, replica_id in enumerate(stop_order)}
        by_cost = sorted(
            current,
            key=lambda r: (_ORDER[r.phase], rank.get(r.replica_id, len(rank)), -r.since),
        )
        extra = [r.replica_id for r in by_cost[: have - want]]
        stop += extra
        reasons.append(f"stop {len(extra)}: {have} replicas for a target of {want}")

    # Old versions leave as the new one takes over: keep only as many as cover the gap.
    if old_pending:
        stop += old_pending
        reasons.append(f"drop {len(old_pending)} pending replicas of an older version")
    running_new = sum(r.phase is Phase.RUNNING for r in current)
    order = retire_order(old)
    retire = order[: max(0, len(old) - max(0, want - running_new))]
    if retire:
        reasons.append(f"retire {len(retire)} replicas of an older version")
    if fits is not None and len(retire) < len(order) and any(
        r.phase is Phase.PENDING for r in current
    ):
        # The new version waits for room: stop as few more old replicas as give it some.
        leaving = {r.replica_id for r in replicas if r.phase is Phase.STOPPING}
        leaving |= set(stop) | set(retire)
        rest = order[len(retire):]
        if not fits(frozenset(leaving)):
            for k in range(1, len(rest) + 1):
                if fits(frozenset(leaving | set(rest[:k]))):
                    retire += rest[:k]
                    reasons.append(f"retire {k} more of an older version to make room")
                    break
    stop += retire

    return Plan(start, tuple(stop), timed_out, False, min(wake) if wake else None, tuple(reasons))


_ORDER = {Phase.PENDING: 0, Phase.STARTING: 1, Phase.RUNNING: 2, Phase.STOPPING: 3}


def retire_order(old: Sequence[ReplicaObservation]) -> list[str]:
    """The order older versions' replicas stop in: still starting first, then the oldest."""
    return [r.replica_id for r in sorted(old, key=lambda r: (r.phase is Phase.RUNNING, r.since))]
