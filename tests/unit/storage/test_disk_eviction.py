"""The disk tier's eviction choice: pure, so every case runs in microseconds."""

from __future__ import annotations

from modelplex._storage.disk_eviction import ArtifactView, plan_eviction


def view(key: str, size: int, used: float, held: bool = False) -> ArtifactView:
    return ArtifactView(key, size, used, held)


def test_no_budget_evicts_nothing():
    plan = plan_eviction([view("a", 10**12, 0)], max_bytes=None, incoming=10**12)
    assert plan.victims == () and plan.fits


def test_least_recently_used_go_first_until_the_new_one_fits():
    entries = [view("new", 30, 3.0), view("old", 30, 1.0), view("mid", 30, 2.0)]
    plan = plan_eviction(entries, max_bytes=100, incoming=30)
    assert plan.victims == ("old",) and plan.fits
    plan = plan_eviction(entries, max_bytes=100, incoming=60)
    assert plan.victims == ("old", "mid") and plan.fits


def test_within_budget_nothing_goes():
    plan = plan_eviction([view("a", 10, 1.0)], max_bytes=100, incoming=50)
    assert plan.victims == () and plan.fits


def test_held_artifacts_are_never_victims():
    entries = [view("held", 50, 0.0, held=True), view("free", 50, 5.0)]
    plan = plan_eviction(entries, max_bytes=100, incoming=40)
    assert plan.victims == ("free",) and plan.fits


def test_protected_keys_stay_and_a_plan_that_cannot_fit_says_so():
    entries = [view("held", 80, 0.0, held=True), view("busy", 10, 1.0), view("free", 10, 2.0)]
    plan = plan_eviction(entries, max_bytes=100, incoming=50, protect=frozenset({"busy"}))
    assert plan.victims == ("free",) and not plan.fits


def test_budget_zero_evicts_everything_not_held():
    entries = [view("a", 1, 2.0), view("b", 1, 1.0, held=True), view("c", 1, 0.5)]
    plan = plan_eviction(entries, max_bytes=0)
    assert plan.victims == ("c", "a") and not plan.fits


def test_ties_break_by_key_so_the_choice_is_deterministic():
    entries = [view("b", 10, 1.0), view("a", 10, 1.0)]
    assert plan_eviction(entries, max_bytes=10).victims == ("a",)
