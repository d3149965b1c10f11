"""The controller's decision, pure: target and observed replicas in, actions out."""

from __future__ import annotations

import math

from modelplex._control.reconcile import History, Phase, Plan, Policy, ReplicaObservation, Target, reconcile

POLICY = Policy(start_timeout_s=60.0, backoff_s=(0.5, 1.0, 2.0))


def replica(rid: str, phase: Phase = Phase.RUNNING, version: int = 1, since: float = 0.0):
    return ReplicaObservation(rid, phase, version, since)


def test_a_new_deployment_starts_its_replicas():
    plan = reconcile(Target(3, 1), [], History(), now=0.0, policy=POLICY)
    assert (plan.start, plan.stop, plan.failed) == (3, (), False)


def test_at_target_nothing_happens():
    replicas = [replica("a"), replica("b")]
    assert reconcile(Target(2, 1), replicas, History(healthy_once=True), 5.0, POLICY) == Plan()


def test_a_starting_replica_counts_toward_the_target():
    """Nothing is started twice while the first start is under way: no runaway replacements."""
    replicas = [replica("a"), replica("b", Phase.STARTING, since=4.0)]
    plan = reconcile(Target(2, 1), replicas, History(1, 3.0, True), now=5.0, policy=POLICY)
    assert plan.start == 0 and plan.stop == ()


def test_a_failed_start_waits_out_its_backoff():
    history = History(failures=2, last_failure_at=10.0, healthy_once=True)
    early = reconcile(Target(1, 1), [], history, now=10.5, policy=POLICY)
    assert early.start == 0 and early.wake_at == 11.0  # second failure: 1.0 s
    assert reconcile(Target(1, 1), [], history, now=11.0, policy=POLICY).start == 1


def test_a_replica_starting_past_the_time_out_is_stopped_and_counts_as_a_failure():
    replicas = [replica("slow", Phase.STARTING, since=0.0)]
    plan = reconcile(Target(1, 1), replicas, History(healthy_once=True), now=60.0, policy=POLICY)
    assert plan.timed_out == ("slow",) and plan.stop == ("slow",)
    assert plan.start == 0 and plan.wake_at == 60.5  # the backoff of one failure
    waiting = reconcile(Target(1, 1), [replica("slow", Phase.STARTING)], History(), 30.0, POLICY)
    assert waiting.wake_at == 60.0  # the loop wakes for the time-out even if nothing happens


def test_a_version_that_never_ran_gives_up_after_three_failures_per_replica():
    history = History(failures=5, last_failure_at=1.0)
    assert not reconcile(Target(2, 1), [], history, 100.0, POLICY).failed
    history = History(failures=6, last_failure_at=1.0)
    plan = reconcile(Target(2, 1), [replica("s", Phase.STARTING)], history, 100.0, POLICY)
    assert plan.failed and plan.start == 0 and plan.stop == ("s",)


def test_a_deployment_that_ran_whole_never_gives_up():
    history = History(failures=50, last_failure_at=0.0, healthy_once=True)
    plan = reconcile(Target(1, 1), [], history, now=100.0, policy=POLICY)
    assert not plan.failed and plan.start == 1


def test_scale_down_stops_starting_replicas_first_then_the_newest():
    replicas = [
        replica("old", since=1.0), replica("new", since=9.0),
        replica("booting", Phase.STARTING, since=10.0),
    ]
    assert reconcile(Target(2, 1), replicas, History(), 11.0, POLICY).stop == ("booting",)
    assert reconcile(Target(1, 1), replicas, History(), 11.0, POLICY).stop == ("booting", "new")


def test_stopping_replicas_are_not_counted():
    replicas = [replica("a", Phase.STOPPING), replica("b")]
    assert reconcile(Target(2, 1), replicas, History(), 0.0, POLICY).start == 1


def test_a_rollout_starts_the_new_version_before_it_stops_the_old():
    old = [replica("o1"), replica("o2")]
    plan = reconcile(Target(2, 2), old, History(), 0.0, POLICY)
    assert plan.start == 2 and plan.stop == ()
    # One new replica runs: one old one retires.
    mid = old + [replica("n1", version=2, since=1.0), replica("n2", Phase.STARTING, 2, 1.0)]
    plan = reconcile(Target(2, 2), mid, History(), 2.0, POLICY)
    assert plan.start == 0 and plan.stop == ("o1",)
    # Both run: the last old one retires.
    done = [replica("o2"), replica("n1", version=2), replica("n2", version=2)]
    assert reconcile(Target(2, 2), done, History(), 3.0, POLICY).stop == ("o2",)


def test_the_surge_bounds_a_rollout():
    old = [replica("o1"), replica("o2"), replica("o3")]
    plan = reconcile(Target(3, 2), old, History(), 0.0, Policy(max_surge=1))
    assert plan.start == 1


def test_a_rolled_back_version_retires_the_replicas_of_the_failed_one():
    replicas = [replica("o1"), replica("bad", Phase.STARTING, version=3)]
    plan = reconcile(Target(1, 2), replicas, History(healthy_once=True), 0.0, POLICY)
    assert plan.stop == ("bad",) and plan.start == 0


def test_backoff_grows_and_is_capped():
    assert [POLICY.backoff(n) for n in range(6)] == [0.0, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert History().last_failure_at == -math.inf


def test_scale_down_follows_the_stop_order_among_running_replicas():
    replicas = [replica("a", since=1.0), replica("b", since=2.0), replica("c", since=3.0)]
    plan = reconcile(Target(2, 1), replicas, History(), 4.0, POLICY, stop_order=("a", "c"))
    assert plan.stop == ("a",)
    plan = reconcile(Target(1, 1), replicas, History(), 4.0, POLICY, stop_order=("b",))
    assert plan.stop == ("b", "c")  # then the newest of those not ranked


# ---- pending: replicas waiting for room on the node ---------------------------------------------


def test_a_pending_replica_counts_toward_the_target_and_never_times_out():
    replicas = [replica("a"), replica("p", Phase.PENDING, since=0.0)]
    plan = reconcile(Target(2, 1), replicas, History(healthy_once=True), 1000.0, POLICY)
    assert plan == Plan()  # no second start, no time-out, no wake-up of its own


def test_scale_down_stops_pending_replicas_first():
    replicas = [replica("r"), replica("s", Phase.STARTING, since=5.0), replica("p", Phase.PENDING)]
    plan = reconcile(Target(1, 1), replicas, History(healthy_once=True), 10.0, POLICY)
    assert plan.stop == ("p", "s")


def test_a_version_given_up_on_drops_its_pending_replicas():
    history = History(failures=3, last_failure_at=1.0)
    replicas = [replica("p", Phase.PENDING, version=2)]
    plan = reconcile(Target(1, 2), replicas, history, 100.0, POLICY)
    assert plan.failed and plan.stop == ("p",)


def test_an_older_version_s_pending_replicas_go_at_once():
    replicas = [replica("old", version=1), replica("oldp", Phase.PENDING, version=1)]
    plan = reconcile(Target(1, 2), replicas, History(), 10.0, POLICY)
    assert "oldp" in plan.stop and "old" not in plan.stop and plan.start == 1


def one_gpu_node(holders: dict[str, int], gpus: int):
    """``fits`` for a pending replica asking one device, on a node of ``gpus`` devices."""
    return lambda released: sum(n for r, n in holders.items() if r not in released) < gpus


def test_a_surge_that_does_not_fit_retires_one_old_replica_to_make_room():
    replicas = [replica("o1", since=1.0), replica("o2", since=2.0),
                replica("n1", Phase.PENDING, version=2, since=3.0),
                replica("n2", Phase.PENDING, version=2, since=3.0)]
    fits = one_gpu_node({"o1": 1, "o2": 1}, gpus=2)
    plan = reconcile(Target(2, 2), replicas, History(), 5.0, POLICY, fits=fits)
    assert plan.stop == ("o1",) and plan.start == 0  # the oldest goes; o2 keeps serving


def test_room_already_on_its_way_stops_no_more():
    replicas = [replica("o1", Phase.STOPPING), replica("o2"),
                replica("n1", Phase.PENDING, version=2), replica("n2", Phase.PENDING, version=2)]
    fits = one_gpu_node({"o1": 1, "o2": 1}, gpus=2)
    assert reconcile(Target(2, 2), replicas, History(), 5.0, POLICY, fits=fits).stop == ()


def test_replicas_retired_anyway_count_as_room():
    """n1 runs, so o1 retires as usual; that is the room n2 needs: o2 keeps serving."""
    replicas = [replica("o1", since=1.0), replica("o2", since=2.0),
                replica("n1", version=2), replica("n2", Phase.PENDING, version=2)]
    fits = one_gpu_node({"o1": 1, "o2": 1, "n1": 1}, gpus=3)
    plan = reconcile(Target(2, 2), replicas, History(), 5.0, POLICY, fits=fits)
    assert plan.stop == ("o1",)


def test_when_old_replicas_hold_nothing_it_needs_none_are_stopped():
    replicas = [replica("o1"), replica("n1", Phase.PENDING, version=2)]
    plan = reconcile(Target(1, 2), replicas, History(), 5.0, POLICY, fits=lambda released: False)
    assert plan.stop == ()  # it waits for room that others hold; the old one keeps serving
